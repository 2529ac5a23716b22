/* The cost dashboards' charts (templates/admin/dashboards/): each page names its JSON endpoint in a data- attribute,
   this file fetches it (same origin, the session cookie) and draws it with Chart.js (vendor/chartjs, served by the
   project). No inline script, no innerHTML of data: text goes in through textContent, so a service or tag named
   <script> stays text. A drawn chart's container gets data-drawn="true" (the browser tests wait for it). */
(function () {
  "use strict";

  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#86bcb6", "#d37295", "#a0cbe8", "#8cd17d", "#fabfd2", "#b6992d", "#499894", "#d4a6c8",
    "#f1ce63", "#79706e", "#d7b5a6"];
  var OTHER_COLOR = "#bab0ac";
  var LOCALE = "en-US";

  function money(value, currency) {
    if (value === null || value === undefined || value === "") { return "–"; }
    try {
      return new Intl.NumberFormat(LOCALE, { style: "currency", currency: currency || "USD",
        minimumFractionDigits: 2, maximumFractionDigits: 2 }).format(Number(value));
    } catch (e) {
      return Number(value).toFixed(2) + " " + currency;
    }
  }

  function num(value) { return value === null || value === undefined ? null : Number(value); }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function fail(container, message) {
    var box = container.querySelector(".dash-error") || container.insertBefore(el("p", { "class": "dash-error errornote" }), container.firstChild);
    box.textContent = message;
    container.setAttribute("data-error", "true");
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) {
          var detail = body.detail || Object.keys(body).map(function (k) { return k + ": " + body[k]; }).join("; ");
          throw new Error("The dashboard data could not be loaded (" + r.status + "): " + (detail || r.statusText));
        }
        return body;
      });
    });
  }

  function baseOptions(currency, extra) {
    var options = {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: {
        // A band is two datasets (low, high filled between them): the legend names it once.
        legend: { position: "bottom", labels: { boxWidth: 12, filter: function (item) { return !/\(low\)$/.test(item.text); } } },
        tooltip: { callbacks: { label: function (ctx) {
          var v = ctx.parsed.y !== undefined && ctx.chart.options.indexAxis !== "y" ? ctx.parsed.y : ctx.parsed.x;
          return (ctx.dataset.label ? ctx.dataset.label + ": " : "") + money(v, currency);
        } } }
      },
      scales: { y: { ticks: { callback: function (v) { return money(v, currency); } } } }
    };
    return Object.assign(options, extra || {});
  }

  function draw(canvas, config) {
    var chart = new window.Chart(canvas, config);
    canvas.parentNode.setAttribute("data-drawn", "true");
    return chart;
  }

  function fillTable(tbody, rows, currency, totalLabel) {
    tbody.textContent = "";
    var sum = 0;
    rows.forEach(function (row) {
      var tr = el("tr");
      tr.appendChild(el("td", {}, row.label));
      tr.appendChild(el("td", { "class": "dash-money" }, money(row.total, row.currency || currency)));
      tbody.appendChild(tr);
      sum += Number(row.total);
    });
    if (!rows.length) {
      var empty = el("tr");
      empty.appendChild(el("td", { colspan: "2", "class": "dash-empty" }, "No spend in this period."));
      tbody.appendChild(empty);
      return;
    }
    var total = el("tr", { "class": "dash-total" });
    total.appendChild(el("td", {}, totalLabel || "Total of these"));
    total.appendChild(el("td", { "class": "dash-money" }, money(sum, currency)));
    tbody.appendChild(total);
  }

  // --- spend ---------------------------------------------------------------------------------------------------

  function spend(container) {
    getJSON(container.getAttribute("data-api")).then(function (data) {
      var currency = data.currency;
      container.querySelector("[data-field=total]").textContent = money(data.total, currency);
      container.querySelector("[data-field=period]").textContent = data.date_from + " – " + data.date_to;
      var mtd = data.month_to_date;
      container.querySelector("[data-field=mtd-this]").textContent = money(mtd.this_month.total, currency);
      container.querySelector("[data-field=mtd-last]").textContent = money(mtd.last_month.total, currency);
      container.querySelector("[data-field=mtd-change]").textContent =
        mtd.change_percent === null ? "no spend last month" : (Number(mtd.change_percent) > 0 ? "+" : "") + mtd.change_percent + " %";
      container.querySelector("[data-field=mtd-days]").textContent =
        mtd.this_month.date_from + " – " + mtd.this_month.date_to + " vs " + mtd.last_month.date_from + " – " + mtd.last_month.date_to;
      var currencies = container.querySelector("[data-field=currencies]");
      currencies.textContent = data.currencies.length > 1 ? "Other currencies with spend: " +
        data.currencies.filter(function (c) { return c !== currency; }).join(", ") + " (filter by currency to see them)." : "";

      draw(container.querySelector("#spend-chart"), {
        type: "bar",
        data: {
          // A long period comes by month: label it by its month (YYYY-MM), not its first day.
          labels: data.granularity === "month" ? data.days.map(function (d) { return d.slice(0, 7); }) : data.days,
          datasets: data.series.map(function (s, i) {
            return { label: s.label, data: s.values.map(num),
              backgroundColor: s.key === "(other)" ? OTHER_COLOR : PALETTE[i % PALETTE.length], stack: "spend" };
          })
        },
        options: baseOptions(currency, {
          scales: {
            x: { stacked: true, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
            y: { stacked: true, ticks: { callback: function (v) { return money(v, currency); } } }
          }
        })
      });
      draw(container.querySelector("#mtd-chart"), {
        type: "bar",
        data: {
          labels: ["Last month, same days", "This month to date"],
          datasets: [{ label: "Spend", data: [num(mtd.last_month.total), num(mtd.this_month.total)],
            backgroundColor: [OTHER_COLOR, PALETTE[0]] }]
        },
        options: baseOptions(currency, { plugins: { legend: { display: false } } })
      });
      ["services", "accounts", "regions"].forEach(function (name) {
        fillTable(container.querySelector("#top-" + name), data.top[name], currency);
      });
      // The tag values come from the largest table, in their own request: the chart does not wait for them.
      var tagsUrl = new URL(container.getAttribute("data-tags-api"), window.location.href);
      tagsUrl.searchParams.set("currency", currency);
      return getJSON(tagsUrl.toString()).then(function (tags) {
        fillTable(container.querySelector("#top-tags"), tags.tags, tags.currency);
        container.querySelector("#top-tags").setAttribute("data-loaded", "true");
      });
    }).catch(function (e) { fail(container, e.message); });
  }

  // --- budgets -------------------------------------------------------------------------------------------------

  function budgetRow(tbody, b) {
    var tr = el("tr");
    var name = el("td");
    name.appendChild(el("a", { href: "#budget-" + b.id }, b.name));
    tr.appendChild(name);
    tr.appendChild(el("td", {}, b.period_start ? b.period_start + " – " + b.period_end : "no current period"));
    tr.appendChild(el("td", { "class": "dash-money" }, money(b.amount, b.currency)));
    tr.appendChild(el("td", { "class": "dash-money" }, money(b.actual, b.currency)));
    tr.appendChild(el("td", { "class": "dash-money" }, b.percent_used === null ? "–" : b.percent_used + " %"));
    tr.appendChild(el("td", { "class": "dash-money" }, money(b.forecast, b.currency)));
    tr.appendChild(el("td", { "class": "dash-money" }, b.forecast_low === null ? "–" :
      money(b.forecast_low, b.currency) + " – " + money(b.forecast_high, b.currency)));
    var pct = el("td", { "class": "dash-money" }, b.forecast_percent === null ? "–" : b.forecast_percent + " %");
    if (b.forecast_percent !== null && Number(b.forecast_percent) >= 100) { pct.className += " dash-over"; }
    tr.appendChild(pct);
    tbody.appendChild(tr);
  }

  function burnChart(card, burnUrl) {
    getJSON(burnUrl).then(function (b) {
      var n = b.days.length;
      var flat = function (value) { var out = []; for (var i = 0; i < n; i++) { out.push(value); } return out; };
      var datasets = [
        { label: "Forecast, 80 % interval (low)", data: b.low_line.map(num), borderColor: "rgba(242,142,43,0.35)",
          backgroundColor: "rgba(242,142,43,0.15)", pointRadius: 0, borderWidth: 1, fill: false },
        { label: "Forecast, 80 % interval", data: b.high_line.map(num), borderColor: "rgba(242,142,43,0.35)",
          backgroundColor: "rgba(242,142,43,0.15)", pointRadius: 0, borderWidth: 1, fill: "-1" },
        { label: "Forecast", data: b.forecast_line.map(num), borderColor: "#f28e2b", borderDash: [6, 4],
          pointRadius: 0, borderWidth: 2, fill: false },
        { label: "Actual (cumulative)", data: b.cumulative.map(num), borderColor: "#4e79a7",
          backgroundColor: "rgba(78,121,167,0.2)", pointRadius: 0, borderWidth: 3, fill: "origin" },
        { label: "Budget " + money(b.amount, b.currency), data: flat(num(b.amount)), borderColor: "#e15759",
          pointRadius: 0, borderWidth: 2, fill: false }
      ];
      b.thresholds.forEach(function (t) {
        if (Number(t.amount) === Number(b.amount)) { return; }
        datasets.push({ label: "Threshold " + t.label, data: flat(num(t.amount)), borderColor: "#79706e",
          borderDash: [2, 3], pointRadius: 0, borderWidth: 1, fill: false });
      });
      draw(card.querySelector("canvas"), {
        type: "line",
        data: { labels: b.days, datasets: datasets },
        options: baseOptions(b.currency, { scales: {
          x: { ticks: { maxRotation: 0, autoSkipPadding: 12 } },
          y: { beginAtZero: true, ticks: { callback: function (v) { return money(v, b.currency); } } }
        } })
      });
    }).catch(function (e) { fail(card, e.message); });
  }

  function budgets(container) {
    var burnTemplate = container.getAttribute("data-burn");
    getJSON(container.getAttribute("data-api")).then(function (data) {
      var tbody = container.querySelector("#budget-rows");
      var cards = container.querySelector("#budget-cards");
      if (!data.budgets.length) {
        var empty = el("tr");
        empty.appendChild(el("td", { colspan: "8", "class": "dash-empty" }, "No active budget in your teams' scope."));
        tbody.appendChild(empty);
      }
      data.budgets.forEach(function (b) {
        budgetRow(tbody, b);
        var card = el("div", { "class": "dash-card", id: "budget-" + b.id });
        card.appendChild(el("h3", {}, b.name + " — " + money(b.amount, b.currency) + " " + b.period));
        var box = el("div", { "class": "dash-chart", "data-budget": String(b.id) });
        box.appendChild(el("canvas", { "aria-label": "Burn chart of " + b.name, role: "img" }));
        card.appendChild(box);
        cards.appendChild(card);
        burnChart(card, burnTemplate.replace("/0/", "/" + b.id + "/"));
      });
      container.setAttribute("data-loaded", "true");
    }).catch(function (e) { fail(container, e.message); });
  }

  // --- anomalies -----------------------------------------------------------------------------------------------

  function causes(tbody, rows, currency) {
    tbody.textContent = "";
    if (!rows.length) {
      var none = el("tr");
      none.appendChild(el("td", { colspan: "4", "class": "dash-empty" }, "No single contributor carries 10 % of the impact."));
      tbody.appendChild(none);
    }
    rows.forEach(function (c) {
      var tr = el("tr");
      tr.appendChild(el("td", {}, c.dimension === "tag" ? "tag " + c.key : c.dimension.replace("_", "-")));
      tr.appendChild(el("td", {}, c.value || "(none)"));
      tr.appendChild(el("td", { "class": "dash-money" }, money(c.expected, currency) + " → " + money(c.actual, currency)));
      tr.appendChild(el("td", { "class": "dash-money" }, "+" + money(c.impact, currency) +
        (c.share !== undefined ? " (" + Math.round(c.share * 100) + " %)" : "")));
      tbody.appendChild(tr);
    });
  }

  function anomaly(card) {
    getJSON(card.getAttribute("data-api")).then(function (a) {
      var marked = a.actual.map(function (v, i) { return a.anomalous[i] ? num(v) : null; });
      draw(card.querySelector("canvas"), {
        type: "line",
        data: {
          labels: a.days,
          datasets: [
            { label: "Band (low)", data: a.lower.map(num), borderColor: "rgba(89,161,79,0.3)", pointRadius: 0,
              borderWidth: 1, fill: false },
            { label: "Expected band", data: a.upper.map(num), borderColor: "rgba(89,161,79,0.3)",
              backgroundColor: "rgba(89,161,79,0.15)", pointRadius: 0, borderWidth: 1, fill: "-1" },
            { label: "Expected", data: a.expected.map(num), borderColor: "#59a14f", borderDash: [6, 4],
              pointRadius: 0, borderWidth: 2, fill: false },
            { label: "Actual", data: a.actual.map(num), borderColor: "#4e79a7", pointRadius: 2, borderWidth: 2,
              fill: false },
            { label: "Anomalous days", data: marked, borderColor: "#e15759", backgroundColor: "#e15759",
              pointRadius: 6, pointStyle: "rectRot", showLine: false, fill: false }
          ]
        },
        options: baseOptions(a.currency, { scales: {
          x: { ticks: { maxRotation: 0, autoSkipPadding: 12 } },
          y: { beginAtZero: true, ticks: { callback: function (v) { return money(v, a.currency); } } }
        } })
      });
      causes(card.querySelector(".dash-causes tbody"), a.root_causes, a.currency);
    }).catch(function (e) { fail(card, e.message); });
  }

  // --- savings -------------------------------------------------------------------------------------------------

  function hbar(canvas, rows, currency) {
    return draw(canvas, {
      type: "bar",
      data: { labels: rows.map(function (r) { return r.label; }),
        datasets: [{ label: "Estimated saving per month", data: rows.map(function (r) { return num(r.total); }),
          backgroundColor: rows.map(function (r, i) { return PALETTE[i % PALETTE.length]; }) }] },
      options: baseOptions(currency, { indexAxis: "y", plugins: { legend: { display: false } },
        scales: { x: { beginAtZero: true, ticks: { callback: function (v) { return money(v, currency); } } } } })
    });
  }

  function savings(container) {
    getJSON(container.getAttribute("data-api")).then(function (data) {
      var totals = container.querySelector("[data-field=totals]");
      totals.textContent = data.totals.length ? data.totals.map(function (t) {
        return money(t.total, t.currency) + " per month in " + t.count + " open recommendation" + (t.count === 1 ? "" : "s");
      }).join("; ") : "No open recommendation with a saving.";
      var done = container.querySelector("[data-field=done]");
      done.textContent = data.done.length ? "Done: " + data.done.map(function (t) {
        return money(t.total, t.currency) + " per month (" + t.count + ")";
      }).join("; ") : "";
      var currency = data.totals.length ? data.totals[0].currency : "USD";
      var mine = function (r) { return r.currency === currency; };
      hbar(container.querySelector("#savings-by-rule"), data.by_rule.filter(mine), currency);
      hbar(container.querySelector("#savings-by-account"), data.by_account.filter(mine), currency);
      fillTable(container.querySelector("#rule-rows"), data.by_rule.filter(mine), currency, "Total");
      fillTable(container.querySelector("#account-rows"), data.by_account.filter(mine), currency, "Total");
    }).catch(function (e) { fail(container, e.message); });
  }

  function start() {
    if (!window.Chart) { return; }
    window.Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    document.querySelectorAll("[data-dashboard=spend]").forEach(spend);
    document.querySelectorAll("[data-dashboard=budgets]").forEach(budgets);
    document.querySelectorAll("[data-dashboard=anomaly]").forEach(anomaly);
    document.querySelectorAll("[data-dashboard=savings]").forEach(savings);
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
}());
