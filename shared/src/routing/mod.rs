//! Routing: the pure engine (fences, ratings, splits) and its application to
//! stored orders (planning, placement, backorders, decisions).

pub mod allocation;
pub mod engine;
pub mod settings;
