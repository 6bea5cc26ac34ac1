// tests/interop/sdk.mjs -- the one place that says where the interop programs get their peers.
//
// Why it exists: the pinned packages live in tests/peers/node_modules (one lockfile for all
// peers), which Node's resolver never searches from tests/interop. Importing the package files
// by path here keeps every other file in this folder on plain names.
export { Client } from '../peers/node_modules/@modelcontextprotocol/sdk/dist/esm/client/index.js';
export { StreamableHTTPClientTransport } from '../peers/node_modules/@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js';
export { UnauthorizedError } from '../peers/node_modules/@modelcontextprotocol/sdk/dist/esm/client/auth.js';
export * as jose from '../peers/node_modules/jose/dist/webapi/index.js';
