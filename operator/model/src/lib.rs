//! The model path: what an LLM agent's run may do and what it costs.
//!
//! * [`policy`]: EffectivePolicy, resolved by a pure function from the Policy/Routing,
//!   Project and Agent contracts (route with fallback, privacy gate, budget, timeouts).
//! * [`budget`]: the PostgreSQL budget ledger (reserve worst case, settle actual, expiry,
//!   hard-limit breaker).
//! * [`breaker`]: per-provider circuit breakers, the project breaker and the anomaly counter.
//! * [`wire`]: the OpenAI, Anthropic and Ollama wire formats and stream decoders.
//! * [`proxy`]: ProviderProxy, the only way a model call leaves the platform (fallback,
//!   budget, in-flight abort, PlatformEnvelope, audit).
//! * [`validate`]: the output schema validator and `ValidatedOutput` (owned by the runtime
//!   crate, which checks every output; re-exported here).
//! * [`executor`]: the LLM tool-calling executor and the per-agent executor choice.
//! * [`context`]: prompt assembly under the context firewall (foreign-domain items refused).
//! * [`history`]: the conversation history of a run started from a channel, read only from
//!   channels of domains the agent may read.
//!
//! The provider double speaking the three wire formats (tests, bench) is in `awooop-testkit`.

pub mod breaker;
pub mod budget;
pub mod context;
pub mod executor;
pub mod history;
pub mod policy;
pub mod proxy;
pub use awooop_runtime::validate;
pub mod wire;
