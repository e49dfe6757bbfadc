/* The inference playground (templates/marketplace/playground.html).
 *
 * Sends an OpenAI-style streaming chat completion straight to the gateway with the
 * chosen key, parses the server-sent events as they arrive (fetch + ReadableStream),
 * and shows the answer, the tokens and their cost at the line's prices. A key (pasted
 * or created here) lives only in this tab's sessionStorage. No inline script, no CDN:
 * the page's CSP allows connections to 'self' and the gateway's origin only.
 */
(function () {
  "use strict";

  var form = document.querySelector("[data-playground]");
  if (!form) return;

  var baseUrl = form.dataset.baseUrl;
  var lineSelect = form.querySelector("[data-line]");
  var keyInput = form.querySelector("[data-key]");
  var keyStatus = form.querySelector("[data-key-status]");
  var createButton = form.querySelector("[data-create-key]");
  var promptInput = form.querySelector("[data-prompt]");
  var maxTokensInput = form.querySelector("[data-max-tokens]");
  var sendButton = form.querySelector("[data-send]");
  var stopButton = form.querySelector("[data-stop]");
  var answer = document.querySelector("[data-answer]");
  var errorBox = document.querySelector("[data-error]");
  var stats = document.querySelector("[data-stats]");
  var controller = null;

  function storageKey() {
    return "hashgrid.playground.key." + lineSelect.value;
  }

  function chosen() {
    return lineSelect.options[lineSelect.selectedIndex].dataset;
  }

  function loadKey() {
    var stored = null;
    try { stored = window.sessionStorage.getItem(storageKey()); } catch (e) { stored = null; }
    keyInput.value = stored || "";
    keyStatus.textContent = stored ? "Using the key kept in this tab for this model." : "";
  }

  function saveKey() {
    try { window.sessionStorage.setItem(storageKey(), keyInput.value.trim()); } catch (e) { /* private mode */ }
  }

  // Prices are decimal strings with up to 4 places; money in units of 1e-10 as BigInt.
  function priceE4(price) {
    var parts = String(price).split(".");
    var fraction = ((parts[1] || "") + "0000").slice(0, 4);
    return BigInt(parts[0] + fraction);
  }

  // Exact cost (tokens x price per million, in units of 1e-10), written out in full:
  // a few tokens cost millionths of a cent, which rounding to cents would hide.
  function formatCost(inputTokens, outputTokens, data) {
    var units = BigInt(inputTokens) * priceE4(data.inputPrice) + BigInt(outputTokens) * priceE4(data.outputPrice);
    var scale = 10000000000n;
    var fraction = (units % scale).toString().padStart(10, "0").replace(/0+$/, "");
    if (fraction.length < 2) fraction = (fraction + "00").slice(0, 2);
    return (units / scale).toString() + "." + fraction + " " + data.currency;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
    answer.dataset.streaming = busy ? "1" : "0";
  }

  function showStats(usage, data, ttftMs, requestId) {
    stats.hidden = false;
    stats.querySelector("[data-input-tokens]").textContent = usage ? usage.prompt_tokens : "—";
    stats.querySelector("[data-output-tokens]").textContent = usage ? usage.completion_tokens : "—";
    stats.querySelector("[data-cost]").textContent = usage
      ? formatCost(usage.prompt_tokens, usage.completion_tokens, data)
      : "—";
    stats.querySelector("[data-ttft]").textContent = ttftMs === null ? "—" : ttftMs + " ms";
    stats.querySelector("[data-request-id]").textContent = requestId || "—";
  }

  // One SSE event block ("data: …" lines); returns false on [DONE].
  function handleEvent(block, state) {
    var payload = block
      .split("\n")
      .filter(function (line) { return line.indexOf("data:") === 0; })
      .map(function (line) { return line.slice(5).replace(/^ /, ""); })
      .join("\n");
    if (!payload) return true;
    if (payload === "[DONE]") return false;
    var chunk = JSON.parse(payload);
    if (chunk.error) throw new Error(chunk.error.message || "The gateway reported an error.");
    if (!state.requestId && chunk.id) state.requestId = chunk.id;
    if (chunk.usage) state.usage = chunk.usage;
    (chunk.choices || []).forEach(function (choice) {
      var text = (choice.delta && choice.delta.content) || choice.text || "";
      if (text) {
        if (state.ttftMs === null) state.ttftMs = Math.round(performance.now() - state.started);
        answer.textContent += text;
      }
    });
    return true;
  }

  async function readStream(response, state) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var result = await reader.read();
      if (result.done) break;
      buffer += decoder.decode(result.value, { stream: true }).replace(/\r\n/g, "\n");
      var boundary;
      while ((boundary = buffer.indexOf("\n\n")) !== -1) {
        var block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        if (!handleEvent(block, state)) return;
      }
    }
    if (buffer.trim()) handleEvent(buffer, state);
  }

  async function send(event) {
    event.preventDefault();
    var key = keyInput.value.trim();
    errorBox.hidden = true;
    if (!key) { showError("Paste an API key of this model's line, or create a playground key."); return; }
    saveKey();
    var data = chosen();
    answer.textContent = "";
    stats.hidden = true;
    var state = { usage: null, ttftMs: null, requestId: null, started: performance.now() };
    controller = new AbortController();
    setBusy(true);
    try {
      var response = await fetch(baseUrl + "/chat/completions", {
        method: "POST",
        headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" },
        body: JSON.stringify({
          model: data.model,
          messages: [{ role: "user", content: promptInput.value }],
          max_tokens: parseInt(maxTokensInput.value, 10) || 64,
          stream: true,
          stream_options: { include_usage: true }
        }),
        signal: controller.signal
      });
      state.requestId = response.headers.get("X-Request-Id");
      if (!response.ok) {
        var message = "The gateway answered " + response.status + ".";
        try {
          var body = await response.json();
          if (body && body.error && body.error.message) message = body.error.message + " (" + response.status + ")";
        } catch (e) { /* not JSON */ }
        showError(message);
        return;
      }
      await readStream(response, state);
      showStats(state.usage, data, state.ttftMs, state.requestId);
    } catch (error) {
      if (error.name === "AbortError") {
        showStats(state.usage, data, state.ttftMs, state.requestId);
        showError("Stopped. You pay for the tokens delivered before the stop.");
      } else {
        showError("Could not reach the gateway at " + baseUrl + ": " + error.message);
      }
    } finally {
      controller = null;
      setBusy(false);
    }
  }

  async function createKey() {
    keyStatus.textContent = "Creating a key…";
    var body = new URLSearchParams();
    body.set("line", lineSelect.value);
    var response = await fetch(form.dataset.keyUrl, {
      method: "POST",
      headers: { "X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value },
      body: body,
      credentials: "same-origin"
    });
    var answerBody = await response.json();
    if (!response.ok) { keyStatus.textContent = answerBody.error || "Could not create a key."; return; }
    keyInput.value = answerBody.api_key;
    saveKey();
    keyStatus.textContent = "Created key " + answerBody.prefix + "… It is kept in this tab only; revoke it from the API keys page when done.";
  }

  lineSelect.addEventListener("change", loadKey);
  keyInput.addEventListener("change", saveKey);
  form.addEventListener("submit", send);
  stopButton.addEventListener("click", function () { if (controller) controller.abort(); });
  if (createButton) createButton.addEventListener("click", createKey);
  loadKey();
})();
