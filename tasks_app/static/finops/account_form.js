// The cloud account form (providers_app admin): only the chosen provider's settings fieldset is shown.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", () => {
    const select = document.getElementById("id_provider");
    if (!select) return;
    const sets = document.querySelectorAll("fieldset.finops-provider-settings");
    function update() {
      sets.forEach((set) => set.classList.toggle("finops-hidden", !set.classList.contains(`finops-provider-${select.value}`)));
    }
    select.addEventListener("change", update);
    update();
  });
})();
