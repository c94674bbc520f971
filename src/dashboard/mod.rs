//! The live web dashboard (`stampede run --ui`, and the controller's dashboard).
