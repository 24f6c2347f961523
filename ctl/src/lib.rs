//! cleanroomctl as a library: only its command-line definition ([`cli`]), shared by the
//! binary and by `cleanroom-docgen`, which writes the man page and shell completions.

pub mod cli;
