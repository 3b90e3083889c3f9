/* esegeta-viewer.js: interactive attribution viewers for the esegeta report and web app.
 *
 * Upgrades every <div class="esegeta-viewer" data-kind="2d|3d" data-input="REF"
 * data-map="REF">. REF is a URL (fetched), a data: URL, or "#ID": the base64 text of the
 * element with that id (the self-contained report stores each payload once that way).
 *
 * 2d: data-input is a PNG, data-map an "EGM1" map (esegeta_core.report.payloads):
 *     b"EGM1", uint32 LE header length N, N bytes of JSON {"height", "width", "dtype":
 *     "float16", "scale", ...}, then height*width little-endian float16 values (times
 *     "scale"), row-major.
 *     The map is drawn over the input on a canvas; opacity, colour map and sign controls.
 * 3d: both are NIfTI (.nii.gz, uint8 with scl_slope/scl_inter); shown in NiiVue (global
 *     `niivue`, loaded before this file) with opacity and threshold controls, slice /
 *     render / MIP modes, and the crosshair linked across every 3D viewer of the page.
 *     data-autostart="false" shows a button first (each WebGL viewer costs a context).
 * MIT licence (esegeta).
 */
(function () {
  "use strict";

  function bytesFromBase64(text) {
    var bin = atob(text.replace(/\s+/g, ""));
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out.buffer;
  }

  function loadBytes(ref) {
    if (ref.charAt(0) === "#") {
      var el = document.getElementById(ref.slice(1));
      if (!el) { return Promise.reject(new Error("no payload element " + ref)); }
      return Promise.resolve(bytesFromBase64(el.textContent));
    }
    if (ref.slice(0, 5) === "data:") {
      return Promise.resolve(bytesFromBase64(ref.slice(ref.indexOf(",") + 1)));
    }
    return fetch(ref, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) { throw new Error(ref + ": HTTP " + r.status); }
      return r.arrayBuffer();
    });
  }

  function imageSource(ref) {
    if (ref.charAt(0) === "#") {
      var el = document.getElementById(ref.slice(1));
      return "data:image/png;base64," + (el ? el.textContent.replace(/\s+/g, "") : "");
    }
    return ref;
  }

  function half(h) {
    var s = (h & 0x8000) ? -1 : 1;
    var e = (h >> 10) & 0x1f;
    var f = h & 0x3ff;
    if (e === 0) { return s * f * Math.pow(2, -24); }
    if (e === 31) { return f ? NaN : s * Infinity; }
    return s * (1 + f / 1024) * Math.pow(2, e - 15);
  }

  /** An EGM1 map: {header, values (Float32Array)}. */
  function decodeMap(buffer) {
    var view = new DataView(buffer);
    var magic = String.fromCharCode(view.getUint8(0), view.getUint8(1), view.getUint8(2),
      view.getUint8(3));
    if (magic !== "EGM1") { throw new Error("not an esegeta map (EGM1) payload"); }
    var n = view.getUint32(4, true);
    var header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, n)));
    var count = header.height * header.width;
    var values = new Float32Array(count);
    var offset = 8 + n, scale = header.scale || 1;
    for (var i = 0; i < count; i++) {
      values[i] = half(view.getUint16(offset + 2 * i, true)) * scale;
    }
    return {header: header, values: values};
  }

  // colour maps: piecewise-linear stops over [0, 1]
  var MAPS = {
    coolwarm: [[0, 59, 76, 192], [0.5, 240, 240, 240], [1, 180, 4, 38]],
    hot: [[0, 0, 0, 0], [0.4, 230, 0, 0], [0.8, 255, 210, 0], [1, 255, 255, 255]],
    viridis: [[0, 68, 1, 84], [0.25, 59, 82, 139], [0.5, 33, 145, 140], [0.75, 94, 201, 98],
      [1, 253, 231, 37]]
  };
  var DIVERGING = {coolwarm: true};

  function colour(stops, t) {
    t = t < 0 ? 0 : (t > 1 ? 1 : t);
    for (var i = 1; i < stops.length; i++) {
      if (t <= stops[i][0]) {
        var a = stops[i - 1], b = stops[i];
        var u = (t - a[0]) / (b[0] - a[0] || 1);
        return [a[1] + u * (b[1] - a[1]), a[2] + u * (b[2] - a[2]), a[3] + u * (b[3] - a[3])];
      }
    }
    var last = stops[stops.length - 1];
    return [last[1], last[2], last[3]];
  }

  function control(box, label, input) {
    var wrap = document.createElement("label");
    wrap.className = "esegeta-control";
    wrap.appendChild(document.createTextNode(label + " "));
    wrap.appendChild(input);
    box.appendChild(wrap);
    return input;
  }

  function slider(box, label, name, value) {
    var input = document.createElement("input");
    input.type = "range"; input.min = "0"; input.max = "100"; input.value = String(value);
    input.name = name;
    return control(box, label, input);
  }

  function select(box, label, name, options, value) {
    var input = document.createElement("select");
    input.name = name;
    options.forEach(function (o) {
      var opt = document.createElement("option");
      opt.value = o[0]; opt.textContent = o[1];
      input.appendChild(opt);
    });
    input.value = value;
    return control(box, label, input);
  }

  function fail(div, error) {
    div.setAttribute("data-state", "error");
    var p = document.createElement("p");
    p.className = "esegeta-viewer-error";
    p.textContent = "Viewer unavailable: " + (error && error.message ? error.message : error);
    div.appendChild(p);
  }

  // -- 2D ---------------------------------------------------------------------------

  function view2d(div) {
    var image = new Image();
    var imageReady = new Promise(function (resolve, reject) {
      image.onload = resolve;
      image.onerror = function () { reject(new Error("the input image did not load")); };
    });
    image.src = imageSource(div.getAttribute("data-input"));
    return Promise.all([loadBytes(div.getAttribute("data-map")), imageReady]).then(function (r) {
      var map = decodeMap(r[0]);
      var w = map.header.width, h = map.header.height;
      var canvas = document.createElement("canvas");
      canvas.width = w; canvas.height = h;
      canvas.className = "esegeta-canvas";
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", div.getAttribute("data-label") || "attribution overlay");
      var layer = document.createElement("canvas");
      layer.width = w; layer.height = h;
      var box = document.createElement("div");
      box.className = "esegeta-controls";
      var signed = map.header.min < 0 && map.header.max > 0;
      var opacity = slider(box, "opacity", "opacity", 60);
      var cmap = select(box, "colours", "colormap", [["coolwarm", "diverging (blue-red)"],
        ["hot", "sequential (hot)"], ["viridis", "sequential (viridis)"]],
        signed ? "coolwarm" : "hot");
      var sign = select(box, "sign", "sign", [["all", "all"], ["positive", "positive"],
        ["absolute", "absolute"]], "all");
      div.appendChild(canvas);
      div.appendChild(box);
      var ctx = canvas.getContext("2d");
      var lctx = layer.getContext("2d");
      function draw() {
        var mode = sign.value, name = cmap.value, alpha = opacity.value / 100;
        var stops = MAPS[name] || MAPS.hot;
        var values = map.values, n = values.length, scale = 0, i, v;
        var shown = new Float32Array(n);
        for (i = 0; i < n; i++) {
          v = values[i];
          if (!isFinite(v)) { v = 0; }
          v = mode === "positive" ? Math.max(v, 0) : (mode === "absolute" ? Math.abs(v) : v);
          shown[i] = v;
          if (Math.abs(v) > scale) { scale = Math.abs(v); }
        }
        var pixels = lctx.createImageData(w, h);
        var data = pixels.data;
        var diverging = DIVERGING[name] === true;
        for (i = 0; i < n; i++) {
          v = scale > 0 ? shown[i] / scale : 0;  // -1 .. 1
          var c = colour(stops, diverging ? (v + 1) / 2 : Math.abs(v));
          data[4 * i] = c[0]; data[4 * i + 1] = c[1]; data[4 * i + 2] = c[2];
          data[4 * i + 3] = Math.round(255 * alpha * Math.min(1, Math.abs(v) * 1.5));
        }
        lctx.putImageData(pixels, 0, 0);
        ctx.clearRect(0, 0, w, h);
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(image, 0, 0, w, h);
        ctx.drawImage(layer, 0, 0);
        div.setAttribute("data-state", "ready");
      }
      [opacity, cmap, sign].forEach(function (input) {
        input.addEventListener("input", draw);
        input.addEventListener("change", draw);
      });
      draw();
    });
  }

  // -- 3D ---------------------------------------------------------------------------

  var linked = [];

  function link(nv) {
    linked.push(nv);
    linked.forEach(function (a) {
      var others = linked.filter(function (b) { return b !== a; });
      if (others.length && a.broadcastTo) { a.broadcastTo(others, {"2d": true, "3d": true}); }
    });
  }

  function mip(volume, canvas) {
    // maximum-intensity projections of |map| along each axis, side by side
    var dims = volume.hdr.dims, nx = dims[1], ny = dims[2], nz = dims[3];
    var slope = volume.hdr.scl_slope || 1, inter = volume.hdr.scl_inter || 0;
    var img = volume.img, planes = [[nx, ny], [nx, nz], [ny, nz]];
    var proj = planes.map(function (p) { return new Float32Array(p[0] * p[1]); });
    var top = 0;
    for (var z = 0; z < nz; z++) {
      for (var y = 0; y < ny; y++) {
        for (var x = 0; x < nx; x++) {
          var v = Math.abs(img[x + nx * (y + ny * z)] * slope + inter);
          var k0 = x + nx * y, k1 = x + nx * z, k2 = y + ny * z;
          if (v > proj[0][k0]) { proj[0][k0] = v; }
          if (v > proj[1][k1]) { proj[1][k1] = v; }
          if (v > proj[2][k2]) { proj[2][k2] = v; }
          if (v > top) { top = v; }
        }
      }
    }
    canvas.width = nx + nx + ny + 8; canvas.height = Math.max(ny, nz);
    var ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    var left = 0;
    planes.forEach(function (p, j) {
      var out = ctx.createImageData(p[0], p[1]);
      for (var b = 0; b < p[1]; b++) {
        for (var a = 0; a < p[0]; a++) {
          var c = colour(MAPS.hot, top > 0 ? proj[j][a + p[0] * b] / top : 0);
          var o = 4 * (a + p[0] * (p[1] - 1 - b));  // superior / anterior up
          out.data[o] = c[0]; out.data[o + 1] = c[1]; out.data[o + 2] = c[2];
          out.data[o + 3] = 255;
        }
      }
      ctx.putImageData(out, left, 0);
      left += p[0] + 4;
    });
  }

  function view3d(div) {
    if (typeof niivue === "undefined" || !niivue.Niivue) {
      return Promise.reject(new Error("NiiVue is not loaded"));
    }
    var holder = document.createElement("div");
    holder.className = "esegeta-niivue";
    var canvas = document.createElement("canvas");
    canvas.setAttribute("aria-label", div.getAttribute("data-label") || "3D attribution viewer");
    holder.appendChild(canvas);
    var mipCanvas = document.createElement("canvas");
    mipCanvas.className = "esegeta-mip";
    mipCanvas.hidden = true;
    mipCanvas.setAttribute("role", "img");
    mipCanvas.setAttribute("aria-label", "maximum-intensity projections of |map|");
    var box = document.createElement("div");
    box.className = "esegeta-controls";
    var opacity = slider(box, "opacity", "opacity", 70);
    var threshold = slider(box, "threshold", "threshold", 20);
    var mode = select(box, "view", "mode", [["multiplanar", "slices"], ["axial", "axial"],
      ["render", "3D render"], ["mip", "MIP"]], "multiplanar");
    div.appendChild(holder);
    div.appendChild(mipCanvas);
    div.appendChild(box);
    var nv = new niivue.Niivue({backColor: [0, 0, 0, 1], show3Dcrosshair: true,
      isColorbar: true, logLevel: "error"});
    return nv.attachToCanvas(canvas).then(function () {
      return Promise.all([loadBytes(div.getAttribute("data-input")),
        loadBytes(div.getAttribute("data-map"))]);
    }).then(function (buffers) {
      return Promise.all([
        niivue.NVImage.loadFromUrl({url: "input.nii.gz", buffer: buffers[0],
          name: "input.nii.gz", colormap: "gray"}),
        niivue.NVImage.loadFromUrl({url: "map.nii.gz", buffer: buffers[1], name: "map.nii.gz",
          colormap: "warm", colormapNegative: "winter", opacity: 0.7})
      ]);
    }).then(function (volumes) {
      nv.addVolume(volumes[0]);
      nv.addVolume(volumes[1]);
      var overlay = volumes[1];
      var top = Math.max(Math.abs(overlay.global_min), Math.abs(overlay.global_max)) || 1;
      function update() {
        var t = Math.max(threshold.value / 100, 0.001) * top;
        overlay.cal_min = t; overlay.cal_max = top;
        overlay.cal_minNeg = -top; overlay.cal_maxNeg = -t;
        nv.setOpacity(1, opacity.value / 100);
        nv.updateGLVolume();
      }
      function setMode() {
        var m = mode.value;
        holder.hidden = m === "mip";
        mipCanvas.hidden = m !== "mip";
        if (m === "mip") { mip(overlay, mipCanvas); return; }
        nv.setSliceType(m === "render" ? nv.sliceTypeRender
          : (m === "axial" ? nv.sliceTypeAxial : nv.sliceTypeMultiplanar));
      }
      threshold.addEventListener("input", update);
      opacity.addEventListener("input", update);
      mode.addEventListener("change", setMode);
      update();
      setMode();
      link(nv);
      div.niivue = nv;
      div.setAttribute("data-state", "ready");
    });
  }

  function upgrade(div) {
    if (div.getAttribute("data-state")) { return; }
    div.setAttribute("data-state", "loading");
    var kind = div.getAttribute("data-kind");
    var start = function () {
      var job = kind === "3d" ? view3d(div) : view2d(div);
      job.catch(function (e) { fail(div, e); });
    };
    if (kind === "3d" && div.getAttribute("data-autostart") === "false") {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "esegeta-start";
      button.textContent = "Open the interactive 3D viewer";
      button.addEventListener("click", function () { button.remove(); start(); });
      div.setAttribute("data-state", "idle");
      div.appendChild(button);
      return;
    }
    start();
  }

  function upgradeAll(root) {
    Array.prototype.forEach.call((root || document).querySelectorAll("div.esegeta-viewer"),
      upgrade);
  }

  window.esegetaViewers = {upgradeAll: upgradeAll, decodeMap: decodeMap};
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { upgradeAll(); });
  } else {
    upgradeAll();
  }
  // htmx swaps in new results: upgrade what arrived
  document.addEventListener("htmx:afterSettle", function (e) { upgradeAll(e.target); });
})();
