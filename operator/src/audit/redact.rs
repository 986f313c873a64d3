//! PLACEHOLDER until the redaction engine lands.
pub struct Redactor;
impl Redactor {
    pub fn global() -> &'static Redactor {
        &Redactor
    }
    pub fn redact_str<'a>(&self, s: &'a str) -> std::borrow::Cow<'a, str> {
        std::borrow::Cow::Borrowed(s)
    }
    pub fn redact_json(&self, _v: &mut serde_json::Value) -> usize {
        0
    }
}
