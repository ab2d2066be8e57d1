"""Single sign-on with OpenID Connect (Keycloak): configuration, the protocol, and accounts made on sign-in."""
