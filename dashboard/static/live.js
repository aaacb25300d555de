// Live fragments: an element with data-live="/url" is re-rendered from that URL every 1.5 s
// (the server renders the same fragment as the page), without reloading the page.
(function () {
  const PERIOD_MS = 1500;
  function poll(el) {
    const url = el.getAttribute("data-live");
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null) { el.innerHTML = html; el.setAttribute("data-updated", String(Date.now())); }
      })
      .catch(function () { /* next tick retries */ })
      .finally(function () { setTimeout(function () { poll(el); }, PERIOD_MS); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      setTimeout(function () { poll(el); }, PERIOD_MS);
    });
  });
})();
