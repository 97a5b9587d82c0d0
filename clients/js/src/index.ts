// @herald/client: Herald's SDK (docs/clients.md).
export * from "./events.js";
export * from "./client.js";
export * from "./state.js";
