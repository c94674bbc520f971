//! StressTestSchedule: cron-scheduled StressTests with a regression gate (GitOps).
