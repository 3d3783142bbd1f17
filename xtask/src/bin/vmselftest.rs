#![allow(dead_code)]
#[path = "../vm.rs"]
mod vm;
fn main() {}
