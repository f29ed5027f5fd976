// Drawing pad for the digits model: plain JS, no dependencies.
// Strokes are drawn black on white; the PNG goes to POST /predict, where the
// server turns it into an MNIST-style 28x28 image (invert, crop, scale, centre),
// and, with the user's label, to POST /feedback.
(function () {
  "use strict";

  var modelName = document.body.dataset.model || "digits";
  var canvas = document.getElementById("pad");
  var ctx = canvas.getContext("2d");
  var labelEl = document.getElementById("label");
  var confidenceEl = document.getElementById("confidence");
  var barsEl = document.getElementById("bars");
  var errorEl = document.getElementById("error");
  var versionEl = document.getElementById("version");
  var kindEl = document.getElementById("kind");
  var feedbackEl = document.getElementById("feedback");
  var digitsEl = document.getElementById("digits");
  var thanksEl = document.getElementById("thanks");

  var drawing = false;
  var dirty = false;
  var last = null;
  var sequence = 0;     // only the newest answer is shown
  var shown = null;     // the drawing and answer the feedback buttons refer to

  function reset() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#000";
    ctx.fillStyle = "#000";
    ctx.lineWidth = Math.round(canvas.width / 14);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    dirty = false;
    labelEl.textContent = "";
    confidenceEl.textContent = "";
    errorEl.hidden = true;
    feedbackEl.hidden = true;
    shown = null;
    renderBars(null);
  }

  function point(clientX, clientY) {
    var rect = canvas.getBoundingClientRect();
    return {
      x: (clientX - rect.left) * (canvas.width / rect.width),
      y: (clientY - rect.top) * (canvas.height / rect.height)
    };
  }

  function begin(p) {
    drawing = true;
    dirty = true;
    last = p;
    ctx.beginPath();
    ctx.arc(p.x, p.y, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function extend(p) {
    if (!drawing) return;
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    last = p;
  }

  function end() {
    if (!drawing) return;
    drawing = false;
    predict();
  }

  if (window.PointerEvent) {
    canvas.addEventListener("pointerdown", function (e) {
      e.preventDefault();
      canvas.setPointerCapture(e.pointerId);
      begin(point(e.clientX, e.clientY));
    });
    canvas.addEventListener("pointermove", function (e) {
      if (!drawing) return;
      e.preventDefault();
      var events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
      if (!events.length) events = [e];
      events.forEach(function (c) { extend(point(c.clientX, c.clientY)); });
    });
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  } else {
    // Older browsers: separate mouse and touch events.
    canvas.addEventListener("mousedown", function (e) { begin(point(e.clientX, e.clientY)); });
    canvas.addEventListener("mousemove", function (e) { extend(point(e.clientX, e.clientY)); });
    window.addEventListener("mouseup", end);
    canvas.addEventListener("touchstart", function (e) {
      e.preventDefault();
      var t = e.changedTouches[0];
      begin(point(t.clientX, t.clientY));
    }, { passive: false });
    canvas.addEventListener("touchmove", function (e) {
      e.preventDefault();
      var t = e.changedTouches[0];
      extend(point(t.clientX, t.clientY));
    }, { passive: false });
    canvas.addEventListener("touchend", end);
    canvas.addEventListener("touchcancel", end);
  }

  function renderBars(probabilities) {
    barsEl.textContent = "";
    var top = probabilities ? probabilities.indexOf(Math.max.apply(null, probabilities)) : -1;
    for (var digit = 0; digit < 10; digit++) {
      var p = probabilities ? probabilities[digit] : 0;
      var li = document.createElement("li");
      li.dataset.digit = String(digit);
      if (digit === top) li.className = "top";
      var name = document.createElement("span");
      name.textContent = String(digit);
      var track = document.createElement("span");
      track.className = "track";
      var fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = (100 * p).toFixed(1) + "%";
      fill.style.display = "block";
      track.appendChild(fill);
      var pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = probabilities ? (100 * p).toFixed(1) + "%" : "";
      li.appendChild(name);
      li.appendChild(track);
      li.appendChild(pct);
      barsEl.appendChild(li);
    }
  }

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = false;
  }

  function showVersion(version, kind) {
    versionEl.textContent = version || "none loaded";
    kindEl.textContent = kind ? "(" + kind + ")" : "";
  }

  function predict() {
    if (!dirty) return;
    var mine = ++sequence;
    canvas.toBlob(function (blob) {
      fetch("/predict", {
        method: "POST",
        headers: { "Content-Type": "image/png" },
        body: blob
      }).then(function (response) {
        return response.json().then(function (body) { return { ok: response.ok, body: body }; });
      }).then(function (answer) {
        if (mine !== sequence) return;          // a newer stroke has been sent since
        if (!answer.ok) {
          showError(answer.body.error || "the server refused the drawing");
          return;
        }
        var result = answer.body.predictions[0];
        errorEl.hidden = true;
        labelEl.textContent = String(result.label);
        confidenceEl.textContent = (100 * result.probabilities[result.label]).toFixed(1) + "%";
        renderBars(result.probabilities);
        showVersion(answer.body.model_version, answer.body.model_kind);
        shown = { blob: blob, label: result.label, version: answer.body.model_version };
        thanksEl.hidden = true;
        feedbackEl.hidden = false;
        document.body.dataset.predictions = String(mine);
      }).catch(function (err) {
        if (mine === sequence) showError("request failed: " + err);
      });
    }, "image/png");
  }

  function loadModelInfo() {
    fetch("/v2/models/" + encodeURIComponent(modelName)).then(function (r) {
      return r.json();
    }).then(function (meta) {
      showVersion(meta.versions && meta.versions[0], meta.parameters && meta.parameters.kind);
    }).catch(function () { showVersion(null, null); });
  }

  // Feedback: the user confirms the answer or picks the right digit; the drawing
  // goes to POST /feedback as the same PNG /predict saw (a data URL in JSON), with
  // both labels. JSON and the X-Digits-Client header are what the server accepts
  // from its own page: another site's page could send neither without a CORS
  // preflight, which the server never grants.
  function sendFeedback(label) {
    if (!shown) return;
    var answered = shown;
    shown = null;                                  // one answer per drawing
    var reader = new FileReader();
    reader.onerror = function () { showError("feedback failed: cannot read the drawing"); };
    reader.onload = function () {
      var body = { image: reader.result, label: label, predicted: answered.label };
      if (answered.version) body.model_version = answered.version;
      fetch("/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Digits-Client": "page" },
        body: JSON.stringify(body)
      }).then(function (response) {
        return response.json().then(function (b) { return { ok: response.ok, body: b }; });
      }).then(function (answer) {
        if (!answer.ok) {
          showError(answer.body.error || "the server refused the feedback");
          return;
        }
        thanksEl.textContent = "Thanks: saved as a " + answer.body.label + ".";
        thanksEl.hidden = false;
        document.body.dataset.feedback = answer.body.stored;
      }).catch(function (err) { showError("feedback failed: " + err); });
    };
    reader.readAsDataURL(answered.blob);
  }

  for (var d = 0; d < 10; d++) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = String(d);
    b.dataset.digit = String(d);
    b.addEventListener("click", function (e) { sendFeedback(Number(e.target.dataset.digit)); });
    digitsEl.appendChild(b);
  }
  document.getElementById("confirm").addEventListener("click", function () {
    if (shown) sendFeedback(shown.label);
  });
  document.getElementById("clear").addEventListener("click", reset);
  document.getElementById("predict").addEventListener("click", predict);
  reset();
  loadModelInfo();
})();
