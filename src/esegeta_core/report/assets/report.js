
(function () {
  "use strict";
  var collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  function sortTable(table, col, type, ascending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row) {
      var cell = row.cells[col];
      var raw = cell ? cell.getAttribute("data-v") : null;
      var value = raw;
      var missing = raw === null || raw === "";
      if (!missing && type === "number") {
        value = parseFloat(raw);
        missing = isNaN(value);
      }
      return {row: row, value: value, missing: missing, index: +row.getAttribute("data-i")};
    });
    rows.sort(function (a, b) {
      if (a.missing !== b.missing) { return a.missing ? 1 : -1; }
      if (a.missing) { return a.index - b.index; }
      var c = 0;
      if (type === "number") {
        c = a.value < b.value ? -1 : (a.value > b.value ? 1 : 0);
      } else {
        c = collator.compare(a.value, b.value);
      }
      if (c === 0) { return a.index - b.index; }
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      var button = th.querySelector("button.sort");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var now = th.getAttribute("aria-sort");
        var dir = (now === "ascending" || now === "descending")
          ? (now === "ascending" ? "descending" : "ascending")
          : (th.getAttribute("data-first") || "ascending");
        Array.prototype.forEach.call(heads, function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", dir);
        sortTable(table, col, th.getAttribute("data-type"), dir === "ascending");
        var status = document.getElementById(table.id + "-status");
        if (status) {
          status.textContent = "Sorted by " + button.textContent.replace(/[\u2191\u2193]/g, "")
            .trim() + ", " + dir + ".";
        }
      });
    });
  });
  var dialog = document.getElementById("zoom");
  if (dialog && dialog.showModal) {
    var big = dialog.querySelector("img");
    var label = dialog.querySelector("p");
    Array.prototype.forEach.call(document.querySelectorAll("button.zoom"), function (b) {
      b.addEventListener("click", function () {
        var img = b.querySelector("img");
        big.src = img.src;
        big.alt = img.alt;
        label.textContent = img.alt;
        dialog.showModal();
      });
    });
    dialog.addEventListener("click", function () { dialog.close(); });
  }
})();
