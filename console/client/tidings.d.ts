// The types of the module the console imports at run time as "../client/tidings.js": the
// JavaScript client that tidings serves at /client/tidings.js (/console/x.js + ../client),
// as `make client` built it into the package.
export * from "../../src/tidings/server/assets/client/tidings.js";
