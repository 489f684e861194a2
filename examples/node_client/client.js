#!/usr/bin/env node
// A Node.js client of the matrl reward service, written from proto/reward.proto and
// docs/reward_api.md only (no Python). Prints one JSON document on stdout.
//
//   node client.js --address HOST:PORT [--token T] list-graphs
//   node client.js --address HOST:PORT [--token T] describe --graph-id red_bricks
//   node client.js --address HOST:PORT [--token T] put-target --key KEY --target photo.png
//   node client.js --address HOST:PORT [--token T] score (--graph-id NAME | --graph-json FILE)
//        (--target FILE | --target-key KEY) --seeds 0,1,2 [--params FILE]   (params: a JSON list,
//        one {node: {param: value}} object per seed; NaN as the bare token NaN)
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const arrow = require("apache-arrow");

const PROTO = path.join(__dirname, "..", "..", "proto", "reward.proto");

function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith("--")) args[argv[i].slice(2)] = argv[++i];
    else args._.push(argv[i]);
  }
  return args;
}

function connect(args) {
  const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, defaults: true, oneofs: true });
  const { RewardService } = grpc.loadPackageDefinition(definition).matrl.reward.v1;
  const limit = 64 << 20; // the server's default max message size
  const client = new RewardService(args.address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": limit, "grpc.max_send_message_length": limit });
  const metadata = new grpc.Metadata();
  if (args.token) metadata.add("authorization", `Bearer ${args.token}`);
  const call = (method, request) => new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + Number(args["timeout-ms"] || 120000) },
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
  return { client, call };
}

// The request record batch (docs/reward_api.md, "Request columns"): sample_id and seed are
// required integers (int64 here); exactly one of graph_json/graph_id and one of
// target_image/target_key per row; params is JSON text or null.
function requestBatch(args) {
  const seeds = args.seeds.split(",").map((s) => BigInt(s.trim()));
  const n = seeds.length;
  const params = args.params ? fs.readFileSync(args.params, "utf8") : null;
  // Keep each row's params as JSON text: re-serialising with JSON.stringify would turn NaN into null.
  const paramRows = params === null ? new Array(n).fill(null) : splitJsonList(params, n);
  const columns = {
    sample_id: arrow.vectorFromArray(seeds.map((_, i) => BigInt(i)), new arrow.Int64()),
    seed: arrow.vectorFromArray(seeds, new arrow.Int64()),
    params: arrow.vectorFromArray(paramRows, new arrow.Utf8()),
  };
  if (args["graph-id"]) columns.graph_id = arrow.vectorFromArray(new Array(n).fill(args["graph-id"]), new arrow.Utf8());
  else columns.graph_json = arrow.vectorFromArray(new Array(n).fill(fs.readFileSync(args["graph-json"], "utf8")), new arrow.Utf8());
  if (args["target-key"]) columns.target_key = arrow.vectorFromArray(new Array(n).fill(args["target-key"]), new arrow.Utf8());
  else {
    const image = new Uint8Array(fs.readFileSync(args.target));
    columns.target_image = arrow.vectorFromArray(new Array(n).fill(image), new arrow.Binary());
  }
  return arrow.tableToIPC(new arrow.Table(columns), "stream"); // the IPC *stream* format
}

// Split a JSON list of objects into the text of each element, keeping bare NaN/Infinity tokens.
function splitJsonList(text, n) {
  const items = [];
  let depth = 0, start = -1, inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) { if (c === "\\") i++; else if (c === '"') inString = false; continue; }
    if (c === '"') inString = true;
    else if (c === "{") { if (depth++ === 0) start = i; }
    else if (c === "}") { if (--depth === 0) items.push(text.slice(start, i + 1)); }
  }
  if (items.length !== n) throw new Error(`params: ${items.length} objects for ${n} seeds`);
  return items;
}

function responseRows(payload) {
  const table = arrow.tableFromIPC(payload);
  const rows = [];
  for (let i = 0; i < table.numRows; i++) {
    const row = table.get(i);
    rows.push({
      sample_id: Number(row.sample_id), reward: row.reward, ok: row.ok, error: row.error,
      terms: row.terms ? row.terms.toJSON() : {}, timings_s: row.timings_s ? row.timings_s.toJSON() : {},
    });
  }
  return rows;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { client, call } = connect(args);
  let out;
  try {
    switch (args._[0]) {
      case "list-graphs":
        out = (await call("ListGraphs", {})).graphs;
        break;
      case "describe":
        out = await call("DescribeGraph", args["graph-id"] ? { graph_id: args["graph-id"] }
          : { graph_json: fs.readFileSync(args["graph-json"], "utf8") });
        break;
      case "put-target":
        out = await call("PutTarget", { key: args.key, image: fs.readFileSync(args.target) });
        break;
      case "score": {
        const reply = await call("Score", { request_id: "node-1", arrow_batch: Buffer.from(requestBatch(args)) });
        out = { request_id: reply.request_id, timings_s: reply.timings_s, rows: responseRows(reply.arrow_batch) };
        break;
      }
      default:
        throw new Error(`unknown command ${args._[0]}; use list-graphs, describe, put-target or score`);
    }
  } catch (err) {
    // a gRPC status: print the code's name and the message that names the culprit
    const name = err.code !== undefined ? Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) : "ERROR";
    process.stdout.write(JSON.stringify({ error: { code: name, message: err.details || err.message } }) + "\n");
    client.close();
    process.exitCode = 2;
    return;
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  client.close();
}

main();
