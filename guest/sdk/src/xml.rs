//! Just enough XML for the storage APIs' answers (S3 and Azure error
//! bodies, STS credentials): the text of the first element with a given
//! name, entities decoded.

/// The text inside the first `<tag>...</tag>`, if any.
pub fn text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_first_element() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>a &amp; b</Message></Error>";
        assert_eq!(super::text(body, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(super::text(body, "Message").as_deref(), Some("a & b"));
        assert_eq!(super::text(body, "Missing"), None);
    }
}
