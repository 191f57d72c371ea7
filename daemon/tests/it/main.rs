mod oidc;
