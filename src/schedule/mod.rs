//! StressTestSchedule: cron-scheduled StressTests with a regression gate (GitOps).
//!
//! [`spec`] holds the CRD types and validation, [`cron`] the schedule's next instant in a time
//! zone, [`decide`] what to do given the schedule, its runs and now (pure), and [`reconcile`]
//! the I/O: a kube-runtime Controller on StressTestSchedule owning StressTests
//! ([`run_schedules`]).

pub mod cron;
pub mod decide;
pub mod reconcile;
pub mod spec;

pub use reconcile::{ScheduleError, ScheduleOptions, run_schedules, run_schedules_with};
pub use spec::{
    RegressionCheck, RegressionGate, RegressionStatus, StressTestSchedule, StressTestScheduleSpec,
    StressTestScheduleStatus, Verdict,
};
