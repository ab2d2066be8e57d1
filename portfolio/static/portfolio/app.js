// Portfolio web UI behaviour. Loaded from our own origin: the CSP allows no inline scripts.
(function () {
  "use strict";

  var STATUS_TEXT = {
    400: "The request was not accepted.",
    403: "Your role does not allow this.",
    404: "Not found, or not visible to you.",
    409: "That conflicts with the current state; reload the page.",
    429: "Too many requests; try again later.",
  };

  function toast(message, kind) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var item = document.createElement("p");
    item.className = "toast" + (kind ? " toast--" + kind : "");
    item.textContent = message;
    box.appendChild(item);
    window.setTimeout(function () {
      item.remove();
    }, 6000);
  }

  // htmx does not swap error responses; say what happened instead of silently doing nothing.
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var message = STATUS_TEXT[xhr.status];
    if (!message) {
      var requestId = xhr.getResponseHeader("X-Request-ID");
      message = "Something went wrong (" + xhr.status + ")" + (requestId ? ", request id " + requestId : "") + ".";
    }
    toast(message, "error");
  });

  document.addEventListener("htmx:sendError", function () {
    toast("The server could not be reached. Check your connection and try again.", "error");
  });

  // Filter forms leave empty fields out of the query, so the pushed URL stays short and shareable.
  document.addEventListener("htmx:configRequest", function (event) {
    if (!event.detail.elt.hasAttribute("data-drop-empty")) return;
    var formData = event.detail.formData;
    var empty = [];
    formData.forEach(function (value, name) {
      if (value === "") empty.push(name);
    });
    empty.forEach(function (name) {
      formData.delete(name);
    });
  });

  // Audit log rows: the row, or its button, opens the details row below it.
  function toggleRow(button) {
    var detail = document.getElementById(button.getAttribute("aria-controls"));
    if (!detail) return;
    var open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", open ? "true" : "false");
    detail.hidden = !open;
    var group = button.closest("tbody");
    if (group) group.classList.toggle("is-open", open);
  }

  document.addEventListener("click", function (event) {
    var target = event.target;

    var toggle = target.closest(".row-toggle");
    if (toggle) {
      toggleRow(toggle);
      return;
    }
    var row = target.closest("tr.event-row");
    if (row && !target.closest("a, button, input, select, textarea, label")) {
      var rowButton = row.querySelector(".row-toggle");
      if (rowButton && !window.getSelection().toString()) toggleRow(rowButton);
      return;
    }

    // Copy buttons next to secrets shown once.
    var copy = target.closest("[data-copy]");
    if (copy) {
      var field = document.querySelector(copy.getAttribute("data-copy"));
      if (!field) return;
      field.select();
      var done = function () {
        copy.textContent = "Copied";
        window.setTimeout(function () {
          copy.textContent = "Copy";
        }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () {
          toast("Copy failed: select the text and copy it by hand.", "error");
        });
      } else if (document.execCommand && document.execCommand("copy")) {
        done();
      } else {
        toast("Select the text and copy it by hand.");
      }
      return;
    }

    // Close an open menu when clicking elsewhere.
    document.querySelectorAll("details.user-menu[open]").forEach(function (menu) {
      if (!menu.contains(target)) menu.removeAttribute("open");
    });
  });

  // Forms that change something hard to undo ask first: <form data-confirm="Archive …?">.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    document.querySelectorAll("details.user-menu[open]").forEach(function (menu) {
      menu.removeAttribute("open");
      var summary = menu.querySelector("summary");
      if (summary) summary.focus();
    });
  });
})();

// Serving pages: the endpoint route editor.
(function () {
  "use strict";

  // Route editor: a row's adapter choices are the adapters of the deployment chosen in that row.
  function syncAdapters(row) {
    var deployment = row.querySelector("select[name$='-deployment']");
    var adapter = row.querySelector("select[name$='-adapter']");
    if (!deployment || !adapter) return;
    adapter.querySelectorAll("optgroup").forEach(function (group) {
      var mine = group.label === deployment.value;
      group.hidden = !mine;
      group.disabled = !mine;
    });
    var chosen = adapter.options[adapter.selectedIndex];
    if (chosen && chosen.parentElement.tagName === "OPTGROUP" && chosen.parentElement.disabled) adapter.value = "";
  }

  function markRemoved(checkbox) {
    var row = checkbox.closest(".route-row");
    if (row) row.classList.toggle("is-removed", checkbox.checked);
  }

  function addRoute(button) {
    var form = button.closest("form");
    var template = document.getElementById("route-row-template");
    var total = form && form.querySelector("input[name$='-TOTAL_FORMS']");
    var rows = form && form.querySelector("[data-route-rows]");
    if (!template || !total || !rows) return;
    var max = form.querySelector("input[name$='-MAX_NUM_FORMS']");
    var index = parseInt(total.value, 10);
    if (max && index >= parseInt(max.value, 10)) {
      button.disabled = true;
      return;
    }
    var holder = document.createElement("tbody");
    holder.innerHTML = template.innerHTML.replace(/__prefix__/g, String(index));
    var row = holder.querySelector("tr");
    rows.appendChild(row);
    total.value = String(index + 1);
    syncAdapters(row);
    var first = row.querySelector("select");
    if (first) first.focus();
  }

  function init(root) {
    root.querySelectorAll("form[data-route-form] .route-row").forEach(syncAdapters);
    root.querySelectorAll("form[data-route-form] input[name$='-DELETE']").forEach(markRemoved);
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.closest("form[data-route-form]")) {
      if (/-deployment$/.test(target.name)) syncAdapters(target.closest(".route-row"));
      if (/-DELETE$/.test(target.name)) markRemoved(target);
    }
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-add-route]");
    if (button) addRoute(button);
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      init(document);
    });
  } else {
    init(document);
  }
})();

// Show-when: a part of a form that applies to some choices only. data-show-when="name=a b" shows the element
// while the form's control `name` holds a or b; "name.kind=cpu" reads the chosen option's data-kind (a pool's
// kind); "!=" shows it for any other choice; conditions joined by ";" must all hold. While a control has
// nothing chosen, its conditions hold only for elements marked data-show-unset (everything applies then). A
// hidden element's controls are disabled, so they are not sent; data-show-when-clear also unticks them.
// A condition on a control the form does not have leaves the element as the server drew it.
(function () {
  "use strict";

  var CONDITION = /^\s*([\w-]+)(?:\.([\w-]+))?\s*(!?=)(.*)$/;

  function chosen(form, name, attribute) {
    var control = form.elements.namedItem(name);
    if (!control) return null;
    if (control.tagName === "SELECT") {
      var option = control.options[control.selectedIndex];
      if (!option || !option.value) return "";
      return attribute ? option.getAttribute("data-" + attribute) || "" : option.value;
    }
    return control.value || "";  // an input, or the checked radio of a group (RadioNodeList)
  }

  function shows(form, element) {
    var conditions = element.getAttribute("data-show-when").split(";");
    for (var i = 0; i < conditions.length; i += 1) {
      var match = CONDITION.exec(conditions[i]);
      if (!match) continue;
      var value = chosen(form, match[1], match[2]);
      if (value === null) return null;
      if (value === "") {
        if (!element.hasAttribute("data-show-unset")) return false;
        continue;
      }
      var listed = match[4].trim().split(/\s+/).indexOf(value) !== -1;
      if (listed !== (match[3] === "=")) return false;
    }
    return true;
  }

  function sync(form) {
    form.querySelectorAll("[data-show-when]").forEach(function (element) {
      var show = shows(form, element);
      if (show === null) return;
      element.hidden = !show;
      element.querySelectorAll("input, select, textarea").forEach(function (input) {
        input.disabled = !show;
        if (!show && element.hasAttribute("data-show-when-clear")) input.checked = false;
      });
    });
  }

  function init() {
    document.querySelectorAll("form").forEach(function (form) {
      if (form.querySelector("[data-show-when]")) sync(form);
    });
  }

  document.addEventListener("change", function (event) {
    var form = event.target.form;
    if (form && form.querySelector("[data-show-when]")) sync(form);
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
