//! Bottleneck identification: the limiting resource per stage and recommendations.
