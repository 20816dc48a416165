// Tabs of the stem docs (the WAI-ARIA tabs pattern). Without this script
// the tablists stay hidden and every panel shows, under its label; with it,
// one panel per group shows, chosen by a click or by the arrow keys, Home
// and End on the focused tab.
(function () {
  "use strict";
  function init(group) {
    var list = group.querySelector(":scope > [role=tablist]");
    if (!list) return;
    var tabs = Array.prototype.slice.call(list.querySelectorAll("[role=tab]"));
    var panels = tabs.map(function (t) {
      return document.getElementById(t.getAttribute("aria-controls"));
    });
    function select(i, focus) {
      tabs.forEach(function (t, j) {
        var on = i === j;
        t.setAttribute("aria-selected", on ? "true" : "false");
        t.tabIndex = on ? 0 : -1;
        if (panels[j]) panels[j].hidden = !on;
      });
      if (focus) tabs[i].focus();
    }
    tabs.forEach(function (t, i) {
      t.addEventListener("click", function () {
        select(i, false);
      });
      t.addEventListener("keydown", function (e) {
        var n = tabs.length;
        var k;
        switch (e.key) {
          case "ArrowRight":
            k = (i + 1) % n;
            break;
          case "ArrowLeft":
            k = (i - 1 + n) % n;
            break;
          case "Home":
            k = 0;
            break;
          case "End":
            k = n - 1;
            break;
          default:
            return;
        }
        e.preventDefault();
        select(k, true);
      });
    });
    var current = 0;
    tabs.forEach(function (t, i) {
      if (t.getAttribute("aria-selected") === "true") current = i;
    });
    select(current, false);
    list.hidden = false;
    group.classList.add("tabs-enhanced");
  }
  function start() {
    document.querySelectorAll("[data-tabs]").forEach(init);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
