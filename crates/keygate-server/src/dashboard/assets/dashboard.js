// keygate dashboard: the copy button, and a hint that presets ignore the checklist.
// Everything else works without this file.
(function () {
  "use strict";

  function copyText(text, done, failed) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { legacyCopy(text, done, failed); });
    } else {
      legacyCopy(text, done, failed);
    }
  }

  function legacyCopy(text, done, failed) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    if (ok) { done(); } else { failed(); }
  }

  function selectContents(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  function setUpCopyButtons() {
    var buttons = document.querySelectorAll("button[data-copy]");
    Array.prototype.forEach.call(buttons, function (button) {
      var target = document.getElementById(button.getAttribute("data-copy"));
      var status = document.getElementById("copy-status");
      if (!target) { return; }
      button.hidden = false;
      button.addEventListener("click", function () {
        copyText(target.textContent.trim(), function () {
          button.textContent = "Copied";
          if (status) { status.textContent = "The key is on your clipboard."; }
          window.setTimeout(function () { button.textContent = "Copy"; }, 2500);
        }, function () {
          selectContents(target);
          if (status) { status.textContent = "Press Ctrl+C (or Cmd+C) to copy the selected key."; }
        });
      });
    });
  }

  function setUpAccessChoice() {
    var checklist = document.getElementById("checklist");
    if (!checklist) { return; }
    var radios = document.querySelectorAll("input[name=access]");
    function update() {
      var custom = document.getElementById("access-custom");
      var preset = custom && !custom.checked;
      checklist.classList.toggle("dimmed", !!preset);
    }
    Array.prototype.forEach.call(radios, function (r) { r.addEventListener("change", update); });
    // Ticking a permission means "custom".
    checklist.addEventListener("change", function () {
      var custom = document.getElementById("access-custom");
      if (custom && !custom.checked) { custom.checked = true; update(); }
    });
    update();
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpCopyButtons();
    setUpAccessChoice();
  });
})();
