//! RFC 9728 protected resource metadata of the tool a verifier protects: the
//! document it serves, where it serves it, and the URL its 401 answers point to.
//!
//! An MCP server (or any OAuth-protected tool) must serve this document so that a
//! client refused with a 401 can discover which authorization server issues its
//! tokens; [`crate::verifier::Answer`] builds those answers.
use crate::domain::Scope;

/// The well-known URI suffix of RFC 9728 §3.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// Why a [`ProtectedResource`] could not be built. Names the field, never echoes
/// its value: a URL given by mistake with user information would carry a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("{field} is not an absolute https URL: {why}")]
    NotHttpsUrl { field: String, why: &'static str },
    #[error("authorization_servers is empty: name at least the Mayfly issuer")]
    NoAuthorizationServer,
    #[error("{field} is not an <action>:<resource pattern> scope: {why}")]
    Scope { field: String, why: String },
    #[error("resource_name is empty or has control characters")]
    ResourceName,
}

/// The protected resource metadata of one tool: its resource identifier, the
/// issuers whose tokens it accepts and what they look like. Built once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    resource: String,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
    resource_name: Option<String>,
    resource_documentation: Option<String>,
    well_known_path: String,
    metadata_url: String,
}

/// An accepted https URL: the origin (scheme and host lower-cased) and the rest.
struct HttpsUrl {
    origin: String,
    rest: String,
}

/// Which components a URL may have beyond scheme, host, port and path.
#[derive(Clone, Copy)]
struct Allow {
    query: bool,
    fragment: bool,
}

impl ProtectedResource {
    /// The metadata of the tool at `resource` (its canonical URI, e.g.
    /// `https://crm.example:9443`), accepting tokens of `authorization_servers`
    /// (the Mayfly issuer, the broker's `[server] issuer`).
    ///
    /// `resource` must be an absolute https URL without query or fragment (RFC
    /// 9728 §1.2 forbids the fragment; RFC 8707 §2 advises against a query, and
    /// without one the well-known location is a plain path a router can match).
    /// Each issuer must be an https URL without query or fragment (RFC 8414 §2).
    pub fn new<S: Into<String>>(
        resource: impl Into<String>,
        authorization_servers: impl IntoIterator<Item = S>,
    ) -> Result<Self, ResourceError> {
        let no_more = Allow {
            query: false,
            fragment: false,
        };
        let url = https_url("resource", &resource.into(), no_more)?;
        let authorization_servers = authorization_servers
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let field = format!("authorization_servers[{i}]");
                https_url(&field, &s.into(), no_more).map(|u| u.origin + &u.rest)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if authorization_servers.is_empty() {
            return Err(ResourceError::NoAuthorizationServer);
        }
        // RFC 9728 §3.1: the suffix goes between the host and the path, and a
        // terminating slash right after the host is dropped first.
        let well_known_path = match url.rest.as_str() {
            "" | "/" => WELL_KNOWN.to_string(),
            path => format!("{WELL_KNOWN}{path}"),
        };
        Ok(ProtectedResource {
            metadata_url: format!("{}{well_known_path}", url.origin),
            resource: url.origin + &url.rest,
            authorization_servers,
            scopes_supported: Vec::new(),
            resource_name: None,
            resource_documentation: None,
            well_known_path,
        })
    }

    /// Advertises the scopes tokens for this tool carry, in the token's `scope`
    /// claim syntax `<action>:<resource pattern>` (e.g. `read:customers/*/*`).
    pub fn with_scopes_supported<S: Into<String>>(
        mut self,
        scopes: impl IntoIterator<Item = S>,
    ) -> Result<Self, ResourceError> {
        self.scopes_supported = scopes
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.into();
                let bad = |why: String| ResourceError::Scope {
                    field: format!("scopes_supported[{i}]"),
                    why,
                };
                let (action, pattern) = s
                    .split_once(':')
                    .ok_or_else(|| bad("no ':' between action and resource".into()))?;
                // The broker's own rule for declared scopes: what a token can carry.
                Scope::declared("audience", pattern, action).map_err(|e| bad(e.to_string()))?;
                Ok(s)
            })
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// A human-readable name of the tool, for clients to show.
    pub fn with_resource_name(mut self, name: impl Into<String>) -> Result<Self, ResourceError> {
        let name = name.into();
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(ResourceError::ResourceName);
        }
        self.resource_name = Some(name);
        Ok(self)
    }

    /// An https page documenting the tool for developers.
    pub fn with_resource_documentation(
        mut self,
        url: impl Into<String>,
    ) -> Result<Self, ResourceError> {
        let any = Allow {
            query: true,
            fragment: true,
        };
        let url = https_url("resource_documentation", &url.into(), any)?;
        self.resource_documentation = Some(url.origin + url.rest.as_str());
        Ok(self)
    }

    /// The resource identifier, scheme and host lower-cased (RFC 3986 §6.2.2.1):
    /// the audience an MCP client names, and the `resource` of the document.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Where the document is served on the tool's own host, e.g.
    /// `/.well-known/oauth-protected-resource` (for a resource with a path `/mcp`:
    /// `/.well-known/oauth-protected-resource/mcp`).
    pub fn well_known_path(&self) -> &str {
        &self.well_known_path
    }

    /// The absolute URL of the document: the `resource_metadata` of every
    /// challenge.
    pub fn metadata_url(&self) -> &str {
        &self.metadata_url
    }

    /// The metadata document (RFC 9728 §2). Mayfly tokens travel in the
    /// `Authorization` header only and are bound to the client certificate (RFC
    /// 8705 §3.4 defines `tls_client_certificate_bound_access_tokens` here).
    pub fn metadata(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
            "tls_client_certificate_bound_access_tokens": true,
        });
        if let Some(doc) = doc.as_object_mut() {
            if !self.scopes_supported.is_empty() {
                doc.insert(
                    "scopes_supported".into(),
                    self.scopes_supported.clone().into(),
                );
            }
            if let Some(name) = &self.resource_name {
                doc.insert("resource_name".into(), name.clone().into());
            }
            if let Some(url) = &self.resource_documentation {
                doc.insert("resource_documentation".into(), url.clone().into());
            }
        }
        doc
    }
}

/// Checks that `text` is an absolute https URL with a host, no user information
/// and only characters a URL may carry (so it can go into a header as it is).
fn https_url(field: &str, text: &str, allow: Allow) -> Result<HttpsUrl, ResourceError> {
    let bad = |why| ResourceError::NotHttpsUrl {
        field: field.to_string(),
        why,
    };
    let after = match text.get(..8) {
        Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &text[8..],
        _ => return Err(bad("the scheme must be https")),
    };
    if !uri_characters(after) {
        return Err(bad("it has a character a URL cannot carry unencoded"));
    }
    if after.contains('#') && !allow.fragment {
        return Err(bad("it has a fragment"));
    }
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if rest.split('#').next().is_some_and(|r| r.contains('?')) && !allow.query {
        return Err(bad("it has a query"));
    }
    if authority.contains('@') {
        return Err(bad("it has user information"));
    }
    if rest.contains(['[', ']']) {
        return Err(bad("it has a character a URL cannot carry unencoded"));
    }
    let (host, port) = if let Some(literal) = authority.strip_prefix('[') {
        let (inside, port) = literal
            .split_once(']')
            .ok_or(bad("its IPv6 literal is not closed"))?;
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(bad("its IPv6 literal is not an address"));
        }
        (&authority[..inside.len() + 2], port)
    } else {
        let colon = authority.find(':').unwrap_or(authority.len());
        let host = &authority[..colon];
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if !host.bytes().all(unreserved) {
            return Err(bad("its host is not a name or an address"));
        }
        (host, &authority[colon..])
    };
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    if let Some(port) = port.strip_prefix(':') {
        let number = (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
        if !number || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("its port is not a number from 1 to 65535"));
        }
    } else if !port.is_empty() {
        return Err(bad("its host is not a name or an address"));
    }
    Ok(HttpsUrl {
        origin: format!("https://{}{port}", host.to_ascii_lowercase()),
        rest: rest.to_string(),
    })
}

/// Only RFC 3986 characters, each `%` followed by two hex digits.
fn uri_characters(s: &str) -> bool {
    let b = s.as_bytes();
    let allowed = |c: u8| c.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&c);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else if allowed(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
