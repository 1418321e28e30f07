// Starts Swagger UI on this frontend's document; no validator badge (it would call a
// server elsewhere).
window.ui = SwaggerUIBundle({ url: "openapi.json", dom_id: "#swagger-ui", validatorUrl: "none" });
