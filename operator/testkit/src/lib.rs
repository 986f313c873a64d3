//! Test doubles of AwoooP, for tests and benchmarks only (never in the default release
//! binary): the MCP fixture server ([`fixture`], also `awooop mcp-fixture` when the `awooop`
//! package is built with the `bench` feature), the model provider double ([`double`]), the
//! chat-provider double (Telegram Bot API, LINE Messaging API, Slack Web API: [`channels`]) and
//! the fake Kubernetes API server ([`fake`]). Each speaks the real wire format of the service it
//! stands in for. [`envtest`] is no double: it runs a real `kube-apiserver` and `etcd` from
//! locally built binaries, for the tests and benchmarks that need the real thing.

pub mod channels;
pub mod double;
pub mod envtest;
pub mod fake;
pub mod fixture;
