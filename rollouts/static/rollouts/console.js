// Rollout console: the distribution page polls its status endpoint and redraws the bars in place (a page
// reload only when the state machine moved, since the buttons and the history change then); the create
// form shows only the chosen strategy's settings.
(function () {
  "use strict";

  function paintBar(key, bar) {
    const element = document.querySelector('[data-bar="' + key + '"]');
    const summary = document.querySelector('[data-summary="' + key + '"]');
    if (!element || !bar) return;
    bar.parts.forEach(function (part) {
      const segment = element.querySelector('[data-part="' + part.kind + '"]');
      if (segment) {
        segment.style.width = part.percent + "%";
        segment.title = part.count + " " + part.kind;
      }
    });
    if (summary) summary.textContent = bar.summary;
  }

  function watch(root) {
    const every = Number(root.dataset.pollMs) || 3000;
    async function poll() {
      try {
        const response = await fetch(root.dataset.statusUrl, {credentials: "same-origin",
                                                                headers: {Accept: "application/json"}});
        if (response.ok) {
          const data = await response.json();
          if (data.signature !== root.dataset.signature) {
            window.location.reload();
            return;
          }
          paintBar("total", data.total);
          data.stages.forEach(function (stage) { paintBar("stage-" + stage.index, stage.bar); });
          document.getElementById("waiting-for").textContent = data.waiting_for || "—";
          if (data.rollback) {
            const back = document.querySelector('[data-bar="rollback"] [data-part="back"]');
            if (back) back.style.width = data.rollback.percent + "%";
            const text = document.querySelector('[data-summary="rollback"]');
            if (text) text.textContent = data.rollback.summary;
          }
          root.dataset.polls = String(Number(root.dataset.polls || 0) + 1);
          if (!data.polling) return;
        }
      } catch (error) {
        // A network hiccup or an expired session: the next poll tries again.
      }
      window.setTimeout(poll, every);
    }
    window.setTimeout(poll, every);
  }

  function strategyFields(form) {
    const select = form.querySelector("#id_strategy");
    if (!select) return;
    function show() {
      const chosen = select.value || "auto";
      form.querySelectorAll("[data-strategies]").forEach(function (row) {
        row.classList.toggle("hidden", row.dataset.strategies.split(" ").indexOf(chosen) < 0);
      });
      const note = form.querySelector(".rollout-auto-note");
      if (note) note.classList.toggle("hidden", chosen !== "auto");
    }
    select.addEventListener("change", show);
    show();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("distribution");
    if (root && root.dataset.poll === "true") watch(root);
    const form = document.getElementById("distribution-form");
    if (form) strategyFields(form);
  });
})();
