//! Prints what `shadowlab info` will report about this host: `cargo run -p shadowlab-framework
//! --example host_info [-- --json]`.

fn main() {
    let info = shadowlab_framework::host::detect();
    if std::env::args().any(|a| a == "--json") {
        match serde_json::to_string_pretty(&info) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("host_info: error: {e}");
                std::process::exit(1);
            }
        }
    } else {
        print!("{info}");
    }
}
