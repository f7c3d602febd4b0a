//! Request paths as bot protection compares them: one normal form, computed once per request,
//! so that an exemption matches the path the upstream is sent and no spelling slips past it.
//!
//! Two forms. The forward form, which the upstream is sent (RFC 3986 §6.2.2 and §5.2.4):
//! percent-encoded unreserved characters (`A–Z a–z 0–9 - . _ ~`) are decoded, other
//! percent-encodings get upper-case hex (a `%` that starts no escape becomes `%25`) and dot
//! segments are removed (`..` never climbs above `/`). The normal form, in which every
//! comparison is made: the forward form with runs of slashes made one. The upstream receives a
//! path without dot segments, so whether it merges slashes or not, it reads the path compared or
//! the same path with its slashes doubled: never one outside an exempt prefix.
//! `/hooks/%2e%2e/admin` is `/admin` in both; `/a//b/./c/` is `/a//b/c/` forwarded, `/a/b/c/`
//! compared.

use std::borrow::Cow;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` has nothing [`forward_form`] would change (the common case).
fn is_forward_form(path: &str) -> bool {
    !path.contains('%') && !path.split('/').any(|s| s == "." || s == "..")
}

/// `path` as the upstream is sent it: percent-encoded unreserved characters decoded, other
/// percent-encodings in upper case (a `%` that starts no escape becomes `%25`), and dot
/// segments removed as RFC 3986 §5.2.4 does (`..` never climbs above `/`). Repeated slashes
/// are kept: they are the client's, and some upstreams give them meaning. A path that does not
/// start with `/` (`*`) is returned as it is.
pub fn forward_form(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/') || is_forward_form(path) {
        return Cow::Borrowed(path);
    }
    // Percent-decoding first, so that `%2e%2e` is a dot segment.
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                let byte = hi << 4 | lo;
                if unreserved(byte) {
                    decoded.push(byte as char);
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
                }
                i += 3;
            }
            // A `%` that starts no escape is a literal one: written as its escape, so that
            // the form is a fixed point (`%%61f` is `%25af`, not `%af`).
            (b'%', _, _) => {
                decoded.push_str("%25");
                i += 1;
            }
            _ => {
                // Bytes of a valid `&str`, copied one char at a time.
                let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
                decoded.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing = false;
    for (n, s) in segments.iter().enumerate() {
        trailing = false;
        match *s {
            "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            "" if n + 1 == segments.len() => trailing = true,
            s => out.push(s),
        }
    }
    let mut form = String::with_capacity(decoded.len());
    for s in &out {
        form.push('/');
        form.push_str(s);
    }
    if trailing || out.is_empty() {
        form.push('/');
    }
    Cow::Owned(form)
}

/// `path` in normal form, the one every comparison uses: its [`forward_form`] with runs of
/// slashes made one (`/a//b/./c/` is `/a/b/c/`, `/hooks/%2e%2e/admin` is `/admin`). For a path
/// already in forward form (as the pipeline leaves every request) this only merges slashes.
pub fn normalize(path: &str) -> Cow<'_, str> {
    match forward_form(path) {
        Cow::Borrowed(p) => merge_slashes(p),
        Cow::Owned(p) => Cow::Owned(merge_slashes(&p).into_owned()),
    }
}

/// A path already in forward form (as the pipeline leaves every request) in normal form: its
/// runs of slashes made one. Borrowed when it has none.
pub fn merge_slashes(path: &str) -> Cow<'_, str> {
    if !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for ch in path.chars() {
        if !(ch == '/' && out.ends_with('/')) {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

/// Whether what follows an exempt prefix could be read by some upstream as climbing out of it:
/// a `;` (path parameters: Tomcat and Spring read `/hooks/..;/admin` as `/admin`), a backslash
/// (a separator to IIS and some Windows stacks), or an encoded slash or backslash (decoded
/// before routing by some frameworks). The normal form keeps these as they are, so a prefix
/// exemption does not cover a path that holds one.
fn may_climb(rest: &str) -> bool {
    rest.contains([';', '\\']) || rest.contains("%2F") || rest.contains("%5C")
}

/// Whether the normalised `path` is one of `patterns`: exact, or a prefix when the pattern ends
/// in `*` (and the rest holds nothing an upstream could read as leaving it, see `may_climb`).
/// Case matters: an exemption is a way past the challenge, so it matches narrowly.
pub fn path_matches(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|rest| !may_climb(rest)),
        None => path == p,
    })
}

/// `path` without `;` parameters in its segments (`/login;jsessionid=1` is `/login`,
/// `/x/..;/login` is `/x/../login`), as servers that read parameters route it.
fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let stripped: Vec<&str> = path
        .split('/')
        .map(|s| s.split_once(';').map_or(s, |(s, _)| s))
        .collect();
    Cow::Owned(stripped.join("/"))
}

/// Whether the normalised `path` is one of the login `patterns`, ignoring ASCII case, one
/// trailing slash and `;` parameters: `/LOGIN`, `/login/` and `/login;jsessionid=1` are
/// `/login` to most frameworks, so they count.
pub fn login_matches(patterns: &[String], path: &str) -> bool {
    let path = without_params(path);
    let path = normalize(&path);
    let path = path.as_ref();
    let trim = |s: &str| -> usize {
        match s.len() > 1 && s.ends_with('/') {
            true => s.len() - 1,
            false => s.len(),
        }
    };
    let path = &path.as_bytes()[..trim(path)];
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => {
            let prefix = prefix.as_bytes();
            path.len() >= prefix.len() && path[..prefix.len()].eq_ignore_ascii_case(prefix)
                // `/auth/*` also covers `/AUTH` itself with the trailing slash trimmed away.
                || prefix.len() == path.len() + 1
                    && prefix.ends_with(b"/")
                    && prefix[..path.len()].eq_ignore_ascii_case(path)
        }
        None => path.eq_ignore_ascii_case(&p.as_bytes()[..trim(p)]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_path_has_one_normal_form() {
        for (raw, normal) in [
            ("/", "/"),
            ("/login", "/login"),
            ("/login/", "/login/"),
            ("/hooks/%2e%2e/admin", "/admin"),
            ("/hooks/%2E%2E/admin", "/admin"),
            ("/hooks/.%2e/admin", "/admin"),
            ("/.well-known/acme-challenge/../../x", "/x"),
            ("/a//b///c", "/a/b/c"),
            ("//admin", "/admin"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/../../..", "/"),
            ("/..", "/"),
            ("/%7Euser/%41%62c", "/~user/Abc"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/../c", "/c"),
            ("/bad%zz/%4", "/bad%25zz/%254"),
            ("/%%61f", "/%25af"),
            ("/.well-known/x", "/.well-known/x"),
            ("/caf\u{e9}/../x", "/x"),
            ("*", "*"),
        ] {
            assert_eq!(normalize(raw), normal, "{raw}");
            assert_eq!(normalize(normal), normal, "{normal} is a fixed point");
        }
        assert!(matches!(normalize("/plain/path.html"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_upstream_is_sent_the_path_without_dot_segments_and_with_its_slashes() {
        for (raw, forward) in [
            ("/a//b///c", "/a//b///c"),
            ("//admin", "//admin"),
            ("/hooks//%7Euser/./a", "/hooks//~user/a"),
            ("/proxy/https://x.test/a/../b", "/proxy/https://x.test/b"),
            ("/a//..", "/a/"),
            ("/hooks/%2e%2e/admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/%%61f", "/%25af"),
            ("*", "*"),
        ] {
            let f = forward_form(raw);
            assert_eq!(f, forward, "{raw}");
            assert_eq!(forward_form(&f), f, "{forward} is a fixed point");
            // What is compared is what the upstream reads, its slashes merged.
            assert_eq!(normalize(&f), normalize(raw), "{raw}");
        }
        assert!(matches!(forward_form("/a//b.html"), Cow::Borrowed(_)));
    }

    #[test]
    fn exemptions_match_narrowly_and_logins_broadly() {
        let exempt = vec!["/hooks/*".to_string(), "/health".to_string()];
        assert!(path_matches(&exempt, "/hooks/github"));
        assert!(path_matches(&exempt, "/health"));
        assert!(!path_matches(&exempt, "/HOOKS/github"));
        assert!(!path_matches(&exempt, "/health/"));
        assert!(!path_matches(&exempt, &normalize("/hooks/%2e%2e/admin")));
        for climbs in [
            "/hooks/..;/admin",
            "/hooks/x;/../../admin",
            "/hooks/..%2Fadmin",
            "/hooks/..%2fadmin",
            "/hooks/..%5Cadmin",
            "/hooks/..\\admin",
        ] {
            assert!(!path_matches(&exempt, &normalize(climbs)), "{climbs}");
        }
        assert!(path_matches(&exempt, "/hooks/a%20b"));

        let login = vec!["/login".to_string(), "/auth/*".to_string()];
        for yes in [
            "/login",
            "/LOGIN",
            "/login/",
            "/LogIn/",
            "/auth/x",
            "/AUTH/token",
            "/auth/",
        ] {
            assert!(login_matches(&login, yes), "{yes}");
        }
        assert!(login_matches(&login, "/Auth"));
        for params in [
            "/login;jsessionid=1",
            "/x/..;/login",
            "/LOGIN;a=b/",
            "/auth;x/token",
        ] {
            assert!(login_matches(&login, &normalize(params)), "{params}");
        }
        for no in ["/login2", "/log", "/", "/login//x", "/authx"] {
            assert!(!login_matches(&login, no), "{no}");
        }
    }
}
