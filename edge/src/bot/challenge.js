(function () {
  "use strict";
  var form = document.getElementById("answer");
  var status = document.getElementById("status");
  var button = document.getElementById("go");
  var seed = form.getAttribute("data-seed");
  var bits = +form.getAttribute("data-bits");
  var K = new Int32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
  ]);
  var H = new Int32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  ]);
  var HEX = "0123456789abcdef";
  // Four hex digits of every 16-bit number, packed as one big-endian message word.
  var QUAD = new Int32Array(65536);
  for (var q = 0; q < 65536; q++) {
    QUAD[q] = (HEX.charCodeAt(q >>> 12) << 24) | (HEX.charCodeAt((q >>> 8) & 15) << 16) |
      (HEX.charCodeAt((q >>> 4) & 15) << 8) | HEX.charCodeAt(q & 15);
  }
  // The message is the seed's 32 hex digits and the nonce's 8: one block, mostly constant.
  var W = new Int32Array(64);
  var head = new Int32Array(8);
  for (var i = 0; i < 8; i++) {
    head[i] = (seed.charCodeAt(4 * i) << 24) | (seed.charCodeAt(4 * i + 1) << 16) |
      (seed.charCodeAt(4 * i + 2) << 8) | seed.charCodeAt(4 * i + 3);
  }

  // The first word of SHA-256(seed || hex(nonce)).
  function first(nonce) {
    var t, a, b, c, d, e, f, g, h, s0, s1, t1, t2, x, y;
    for (t = 0; t < 8; t++) W[t] = head[t];
    W[8] = QUAD[nonce >>> 16];
    W[9] = QUAD[nonce & 0xffff];
    W[10] = 0x80000000 | 0;
    W[11] = 0; W[12] = 0; W[13] = 0; W[14] = 0;
    W[15] = 320;
    for (t = 16; t < 64; t++) {
      x = W[t - 15]; y = W[t - 2];
      s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      W[t] = (W[t - 16] + s0 + W[t - 7] + s1) | 0;
    }
    a = H[0]; b = H[1]; c = H[2]; d = H[3]; e = H[4]; f = H[5]; g = H[6]; h = H[7];
    for (t = 0; t < 64; t++) {
      s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      t1 = (h + s1 + ((e & f) ^ (~e & g)) + K[t] + W[t]) | 0;
      s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    return (a + H[0]) | 0;
  }

  var nonce = 0;
  var started = Date.now();
  var STEP = 50000;
  function say(text) {
    status.textContent = text;
  }
  function work() {
    var end = nonce + STEP;
    for (; nonce < end; nonce++) {
      if (Math.clz32(first(nonce)) >= bits) {
        var hex = ("0000000" + (nonce >>> 0).toString(16)).slice(-8);
        document.getElementById("nonce").value = hex;
        document.getElementById("ms").value = String(Date.now() - started);
        say("Done. Taking you to the page\u2026");
        form.submit();
        return;
      }
    }
    if (nonce >= 0xffffffff) {
      say("This check could not be finished. Reload the page to get a new one.");
      return;
    }
    setTimeout(work, 0);
  }
  button.hidden = true;
  say("Checking that this is a browser operated by a person. This usually takes a second or two, and happens once per session.");
  setTimeout(work, 30);
})();
