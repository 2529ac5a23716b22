// The schedule form (templates/admin/finops/periodictask_change_form.html): under the crontab select, what the
// chosen crontab means in words. django-celery-beat's own inline script, as a file the CSP allows.
(function () {
  "use strict";
  const data = document.getElementById("readable-crontabs");
  const select = document.getElementById("id_crontab");
  if (!data || !select) return;
  const readable = JSON.parse(data.textContent);
  const original = document.getElementById("crontab-help-original").dataset.help || "";
  const translation = document.querySelector(".field-crontab_translation");
  if (translation) translation.classList.add("finops-hidden");
  const help = document.querySelector(".field-crontab .help");
  function update() {
    if (!help) return;
    help.textContent = `${original} Translation: ${readable[select.value] || "—"}`;
  }
  select.addEventListener("change", update);
})();
