#![allow(dead_code)]
#[path = "../vm.rs"]
mod vm;
fn main() { let t = std::time::Instant::now(); println!("{:?} {:?}", vm::ensure_host_packages(), t.elapsed()); }
