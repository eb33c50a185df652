// Dashboard and distribution charts: every element with data-refresh-url is redrawn in place from the server
// (which renders the figures and the SVG charts; this only swaps the HTML) while the tab is visible. The answer's
// X-Dashboard-Fragment header says when to redraw next (0: never); an answer without it, such as the login page
// after the session lapsed, is not shown.
(function () {
  "use strict";

  function redraw(element) {
    let every = Number(element.dataset.refreshMs) || 0;
    async function tick() {
      if (!document.hidden) {
        try {
          const response = await fetch(element.dataset.refreshUrl, {credentials: "same-origin",
                                                                     headers: {Accept: "text/html"}});
          const next = response.headers.get("X-Dashboard-Fragment");
          if (response.ok && next !== null) {
            element.innerHTML = await response.text();
            element.dataset.refreshes = String(Number(element.dataset.refreshes || 0) + 1);
            every = Number(next) || 0;
          }
        } catch (error) {
          // A network hiccup: the next tick tries again.
        }
      }
      if (every) window.setTimeout(tick, every);
    }
    if (every) window.setTimeout(tick, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh-url]").forEach(redraw);
  });
})();
