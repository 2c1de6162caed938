// azurite-blob as the tests start it: the same server and arguments (node azurite_blob.js ARGS),
// with its blob garbage collector run only once, at start.
//
// Why: with in-memory persistence the collector deletes each unreferenced extent through a
// linear search of its metadata, 50-70 ms apiece, in one turn of the event loop. Measured in a
// test session here: 2,023 extents deleted in 29.8 s, during which Azurite answered nothing;
// in CI one such pause outlasted a client's 30 s read timeout. Azure Storage has no such pause,
// so a test that met one would be testing Azurite, not azpar. The cost is memory: extents of
// deleted blobs stay until Azurite stops (a few hundred MB over the whole suite).
"use strict";
const path = require("path");
const azurite = path.join(__dirname, "..", "..", "node_modules", "azurite", "dist", "src", "blob");
// The collector reads this when the server builds it: the longest delay setTimeout honours.
require(path.join(azurite, "utils", "constants")).DEFAULT_GC_INTERVAL_MS = 2 ** 31 - 1;
require(path.join(azurite, "main"));
