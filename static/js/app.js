/* Hashgrid: small progressive enhancements. Everything works without this file. */
(function () {
  "use strict";

  // Mobile navigation: the toggle shows and hides the collapsible part of the top bar.
  function initNavToggle() {
    var toggle = document.querySelector("[data-nav-toggle]");
    var topbar = document.querySelector("[data-topbar]");
    if (!toggle || !topbar) return;
    toggle.addEventListener("click", function () {
      var open = toggle.getAttribute("aria-expanded") === "true";
      toggle.setAttribute("aria-expanded", String(!open));
      topbar.classList.toggle("is-open", !open);
    });
  }

  // Dropdown menus are <details>: close them on outside click and on Escape.
  function initMenus() {
    document.addEventListener("click", function (event) {
      document.querySelectorAll("details[data-menu][open]").forEach(function (menu) {
        if (!menu.contains(event.target)) menu.removeAttribute("open");
      });
    });
    document.addEventListener("keydown", function (event) {
      if (event.key !== "Escape") return;
      document.querySelectorAll("details[data-menu][open]").forEach(function (menu) {
        menu.removeAttribute("open");
        var summary = menu.querySelector("summary");
        if (summary) summary.focus();
      });
    });
  }

  // Flash messages can be dismissed.
  function initMessages(root) {
    root.querySelectorAll("[data-dismiss]").forEach(function (button) {
      button.addEventListener("click", function () {
        var item = button.closest("li, .message");
        if (item) item.remove();
      });
    });
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Fallback for plain-http development servers.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = document.execCommand("copy");
    area.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy failed"));
  }

  // Every .secret box gets a Copy button (added here when the template has none).
  function initSecrets(root) {
    root.querySelectorAll(".secret").forEach(function (box) {
      if (box.dataset.enhanced) return;
      box.dataset.enhanced = "1";
      var valueEl = box.querySelector("[data-secret]");
      if (!valueEl) {
        valueEl = document.createElement("code");
        valueEl.className = "secret-value";
        valueEl.setAttribute("data-secret", "");
        while (box.firstChild) valueEl.appendChild(box.firstChild);
        box.appendChild(valueEl);
      }
      var button = box.querySelector("[data-copy]");
      if (!button) {
        button = document.createElement("button");
        button.type = "button";
        button.className = "btn btn-secondary btn-sm secret-copy";
        button.setAttribute("data-copy", "");
        button.textContent = "Copy";
        box.appendChild(button);
      }
      var status = document.createElement("span");
      status.className = "visually-hidden";
      status.setAttribute("aria-live", "polite");
      box.appendChild(status);
      button.addEventListener("click", function () {
        copyText(valueEl.textContent.trim()).then(
          function () {
            button.textContent = "Copied";
            button.classList.add("is-done");
            status.textContent = "Copied to clipboard";
            setTimeout(function () {
              button.textContent = "Copy";
              button.classList.remove("is-done");
              status.textContent = "";
            }, 2000);
          },
          function () {
            status.textContent = "Copy failed: select the text and copy it by hand";
          }
        );
      });
    });
  }

  // "Go back" links on error pages: back in history, else their href (the home page).
  function initBackLinks() {
    document.querySelectorAll("[data-history-back]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        if (window.history.length > 1) {
          event.preventDefault();
          window.history.back();
        }
      });
    });
  }

  function enhance(root) {
    initMessages(root);
    initSecrets(root);
  }

  document.addEventListener("DOMContentLoaded", function () {
    initNavToggle();
    initMenus();
    initBackLinks();
    enhance(document);
  });
  // Content swapped in by htmx gets the same treatment.
  document.addEventListener("htmx:load", function (event) {
    enhance(event.target);
  });
})();
