//! The JSON rewriting's unit tests.

use super::*;
use crate::proxy::router::test_route;
use crate::Provider;
use http_body_util::BodyExt;

fn route(prefix: &str, upstream: &'static str) -> Route {
    test_route(prefix, upstream, Provider::GitHub)
}

fn github() -> JsonRewrite {
    JsonRewrite::new(
        &route("/github", "https://api.github.com"),
        "127.0.0.1:8080",
    )
    .unwrap()
}

fn all(spec: &JsonRewrite, body: &str) -> String {
    String::from_utf8(spec.rewrite_all(body.as_bytes())).unwrap()
}

/// Feeds `body` in the given chunks, returns the concatenated output.
fn chunked(spec: &JsonRewrite, chunks: &[&[u8]]) -> Vec<u8> {
    let mut s = Scanner::new(spec.clone());
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&s.process(Bytes::copy_from_slice(c)));
    }
    if let Some(rest) = s.finish() {
        out.extend_from_slice(&rest);
    }
    out
}

const SAMPLE: &str = r#"{"url":"https://api.github.com/repos/o/r","comments_url":"https://API.GitHub.com:443/repos/o/r/comments","issues_url":"https://api.github.com/repos/o/r/issues{/number}","html_url":"https://github.com/o/r","esc":"https:\/\/api.github.com\/repos\/o\/r?page=2","quote":"say \"https://api.github.com/x\"","list":["https://api.github.com",7,"/relative"],"bare":"https://api.github.com?x=1","n":null}"#;
const EXPECTED: &str = r#"{"url":"http://127.0.0.1:8080/github/repos/o/r","comments_url":"http://127.0.0.1:8080/github/repos/o/r/comments","issues_url":"http://127.0.0.1:8080/github/repos/o/r/issues{/number}","html_url":"https://github.com/o/r","esc":"http://127.0.0.1:8080/github\/repos\/o\/r?page=2","quote":"say \"https://api.github.com/x\"","list":["http://127.0.0.1:8080/github",7,"/relative"],"bare":"http://127.0.0.1:8080/github?x=1","n":null}"#;

#[test]
fn rewrites_upstream_urls_in_strings() {
    assert_eq!(all(&github(), SAMPLE), EXPECTED);
    let v: serde_json::Value = serde_json::from_str(EXPECTED).unwrap();
    assert_eq!(v["esc"], "http://127.0.0.1:8080/github/repos/o/r?page=2");
}

#[test]
fn every_split_point_gives_the_same_output() {
    let spec = github();
    let body = SAMPLE.as_bytes();
    for at in 0..=body.len() {
        let out = chunked(&spec, &[&body[..at], &body[at..]]);
        assert_eq!(String::from_utf8(out).unwrap(), EXPECTED, "split at {at}");
    }
    // And one byte at a time.
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(String::from_utf8(chunked(&spec, &bytes)).unwrap(), EXPECTED);
    // And every pair of split points over a URL-dense stretch.
    let body = br#"["https:\/\/api.github.com\/a","https://api.github.com/b"]"#;
    let expected = br#"["http://127.0.0.1:8080/github\/a","http://127.0.0.1:8080/github/b"]"#;
    for a in 0..=body.len() {
        for b in a..=body.len() {
            let out = chunked(&spec, &[&body[..a], &body[a..b], &body[b..]]);
            assert_eq!(out, expected, "splits at {a}, {b}");
        }
    }
}

#[test]
fn other_origins_relative_urls_and_mid_string_urls_are_left_alone() {
    let spec = github();
    for s in [
        r#"{"a":"http://api.github.com/x"}"#,
        r#"{"a":"https://api.github.com:8443/x"}"#,
        r#"{"a":"https://api.github.com.evil.example/x"}"#,
        r#"{"a":"https://uploads.github.com/x"}"#,
        r#"{"a":"/repos/o/r"}"#,
        r#"{"a":"see https://api.github.com/x"}"#,
        r#"{"a":"https://api.github.comx/"}"#,
        r#"{"a":"https:/api.github.com/x"}"#,
        r#"{"a":"\u0068ttps://api.github.com/x"}"#,
        r#"{"a":"https://api.github.com\u002fx"}"#,
        r#"{"a":"https://"}"#,
        r#"{"a":"https://u@api.github.com/x"}"#,
        r#"{"a":"https:\/\/u@api.github.com\/x"}"#,
        r#"{"a":""}"#,
        r#"https://api.github.com/not-in-a-string"#,
    ] {
        assert_eq!(all(&spec, s), s);
    }
    // Held bytes of an unterminated string are flushed at the end; a complete prefix in
    // one is rewritten.
    assert_eq!(all(&spec, r#"["https://api.gi"#), r#"["https://api.gi"#);
    assert_eq!(
        all(&spec, r#"["https://api.github.com/x"#),
        r#"["http://127.0.0.1:8080/github/x"#
    );
}

#[test]
fn base_paths_and_the_root_prefix() {
    let drive = JsonRewrite::new(
        &route("/drive", "https://www.googleapis.com/drive/v3"),
        "h:1",
    )
    .unwrap();
    assert_eq!(
        all(
            &drive,
            r#"{"selfLink":"https://www.googleapis.com/drive/v3/files/1?alt=json","b":"https://www.googleapis.com/drive/v3","c":"https://www.googleapis.com/drive/v30/x","d":"https://www.googleapis.com/upload/x","e":"https://www.googleapis.com"}"#
        ),
        r#"{"selfLink":"http://h:1/drive/files/1?alt=json","b":"http://h:1/drive","c":"https://www.googleapis.com/drive/v30/x","d":"https://www.googleapis.com/upload/x","e":"https://www.googleapis.com"}"#
    );
    let root = JsonRewrite::new(&route("/", "http://127.0.0.1:9"), "p:2").unwrap();
    assert_eq!(
        all(&root, r#"["http://127.0.0.1:9/x","HTTP://127.0.0.1:9"]"#),
        r#"["http://p:2/x","http://p:2"]"#
    );
    let default_port = JsonRewrite::new(&route("/g", "http://h.example"), "p").unwrap();
    assert_eq!(
        all(
            &default_port,
            r#"["http://h.example:80/x","http://h.example:8080/x"]"#
        ),
        r#"["http://p/g/x","http://h.example:8080/x"]"#
    );
}

#[test]
fn long_strings_pass_through() {
    let spec = github();
    // A string longer than the cap that starts like a URL on a far too long host.
    let host = "a".repeat(MAX_PENDING * 2);
    let s = format!(r#"{{"a":"https://{host}/x","b":"https://api.github.com/y"}}"#);
    let expected = format!(r#"{{"a":"https://{host}/x","b":"http://127.0.0.1:8080/github/y"}}"#);
    assert_eq!(all(&spec, &s), expected);
    // A long path after a matching prefix streams (only the prefix was held).
    let path = "p/".repeat(MAX_PENDING);
    let s = format!(r#"["https://api.github.com/{path}"]"#);
    let mut scanner = Scanner::new(spec.clone());
    let out = scanner.process(Bytes::from(s.clone()));
    assert_eq!(
        String::from_utf8(out.to_vec()).unwrap(),
        format!(r#"["http://127.0.0.1:8080/github/{path}"]"#)
    );
    // Holding never exceeds the cap, whatever the input.
    let mut scanner = Scanner::new(spec);
    for _ in 0..100 {
        let _ = scanner.process(Bytes::from_static(b"\\/\\/\\/\\/"));
        assert!(scanner.cand.raw.len() <= MAX_PENDING + 1);
    }
}

#[test]
fn invalid_utf8_and_non_json_pass_through_unchanged() {
    let spec = github();
    let mut body = b"{\"a\":\"\xff\xfe\x80https://api.github.com/x\",\"b\":\"".to_vec();
    body.extend_from_slice(b"\xc3\x28\"}\xf0\x9f");
    assert_eq!(spec.rewrite_all(&body), body);
    let noise: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    assert_eq!(spec.rewrite_all(&noise), noise);
    // Invalid UTF-8 after a rewritten prefix stays as it was.
    assert_eq!(
        spec.rewrite_all(b"[\"https://api.github.com/\xff\"]"),
        b"[\"http://127.0.0.1:8080/github/\xff\"]"
    );
}

#[test]
fn untouched_chunks_are_not_copied() {
    let spec = github();
    let chunk = Bytes::from_static(br#"{"html_url":"https://github.com/o/r","n":[1,2,3]}"#);
    let mut s = Scanner::new(spec);
    let out = s.process(chunk.clone());
    assert_eq!(out.as_ptr(), chunk.as_ptr(), "same buffer, no copy");
    assert_eq!(out.len(), chunk.len());
}

#[test]
fn content_types() {
    for yes in [
        "application/json",
        "APPLICATION/JSON",
        "application/json; charset=utf-8",
        " application/json ;charset=utf-8",
        "application/vnd.github+json",
        "application/problem+JSON",
        "application/vnd.github.v3+json; charset=utf-8",
    ] {
        assert!(is_json_type(yes.as_bytes()), "{yes}");
    }
    for no in [
        "",
        "text/plain",
        "application/jsonx",
        "application/x-json-stream",
        "text/json",
        "/+json",
        "application/+json",
        "application/octet-stream",
        "json",
    ] {
        assert!(!is_json_type(no.as_bytes()), "{no}");
    }
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    assert!(applies(&Method::GET, StatusCode::OK, &h));
    assert!(!applies(&Method::GET, StatusCode::NO_CONTENT, &h));
    assert!(!applies(&Method::GET, StatusCode::NOT_MODIFIED, &h));
    h.insert(header::CONTENT_ENCODING, "identity".parse().unwrap());
    assert!(applies(&Method::GET, StatusCode::OK, &h));
    h.append(header::CONTENT_ENCODING, "br".parse().unwrap());
    assert!(!applies(&Method::GET, StatusCode::OK, &h));
}

#[tokio::test]
async fn errors_and_trailers_pass_through() {
    let spec = github();
    // Trailers arriving while bytes are held: the held bytes first, then the trailers.
    let mut trailers = HeaderMap::new();
    trailers.insert("x-t", "1".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"[\"https://api.git"))),
        Ok(Frame::trailers(trailers.clone())),
    ];
    let body = spec.clone().wrap(Frames(frames.into()));
    let collected = body.collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(&collected.to_bytes()[..], b"[\"https://api.git");

    // An error after a rewritten chunk is the body's error.
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(
            b"[\"https://api.github.com/x\",",
        ))),
        Err(std::io::Error::other("upstream reset")),
    ];
    let mut body = spec.wrap(Frames(frames.into()));
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"[\"http://127.0.0.1:8080/github/x\",");
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "upstream reset");
}

#[tokio::test]
async fn a_prepended_first_frame_and_an_unread_one_come_first() {
    let spec = github();
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![Ok(Frame::data(
        Bytes::from_static(b"\"https://api.github.com\"]"),
    ))];
    let mut body = spec.clone().wrap(Frames(frames.into()));
    let n = body.prepend(
        Bytes::from_static(b"[\"https://api.github.com/a\","),
        Prepended::Start,
    );
    assert_eq!(n, b"[\"http://127.0.0.1:8080/github/a\",".len());
    let all = body.collect().await.unwrap().to_bytes();
    assert_eq!(
        &all[..],
        b"[\"http://127.0.0.1:8080/github/a\",\"http://127.0.0.1:8080/github\"]"
    );
    // The whole body at once, ending inside a held candidate: flushed into the count.
    let mut body = spec.clone().wrap(Frames(Default::default()));
    assert_eq!(
        body.prepend(Bytes::from_static(b"[\"https://api"), Prepended::WholeBody),
        13
    );
    body.unread(None);
    assert!(!body.is_end_stream());
    assert_eq!(
        &body.collect().await.unwrap().to_bytes()[..],
        b"[\"https://api"
    );
    // An unread frame is scanned like the others.
    let mut body = spec.wrap(Frames(Default::default()));
    body.unread(Some(Ok(Frame::data(Bytes::from_static(
        b"[\"https://api.github.com/x\"]",
    )))));
    assert_eq!(
        &body.collect().await.unwrap().to_bytes()[..],
        b"[\"http://127.0.0.1:8080/github/x\"]"
    );
}

/// A body of the given frames.
struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, std::io::Error>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.0.pop_front())
    }
}
