//! Feature flags as plain data, served over OFREP by `flags_api` (above this module).
//! [`compile`] turns one flag's YAML into a [`Flag`] (every error at once, each with its field
//! path); [`evaluate`] picks the variant one context gets, and why. Nothing here does I/O,
//! takes a lock or knows about HTTP, the config loader or the snapshot: handlers stay thin
//! over one pure function.

mod condition;
mod eval;
mod model;

pub use condition::{Comparison, Condition, Operator, Pattern, Scalar};
pub use eval::{evaluate, Context, ContextValue, Evaluation, Reason};
pub use model::{
    compile, Flag, FlagError, FlagRamp, RawFlag, RawRule, RawServe, Rollout, Rule, Serve, Variant,
};
