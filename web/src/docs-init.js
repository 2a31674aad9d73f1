// Starts Swagger UI on the /docs page. A file of its own, not an inline script: the page's
// Content-Security-Policy allows scripts from the server's own origin only.
"use strict";

window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    // Relative to /docs, so that the page works behind a proxy that adds a path prefix.
    url: "openapi.json",
    dom_id: "#swagger-ui",
    // No badge asking a validator service on the internet to check the document.
    validatorUrl: null,
    deepLinking: true,
    displayRequestDuration: true,
    // Sends the session cookie with "Try it out" requests, as the page's own origin.
    withCredentials: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
