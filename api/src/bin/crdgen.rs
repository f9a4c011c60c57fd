//! Prints the `Function` CustomResourceDefinition as YAML:
//! `cargo run -p sluice-api --features crd --bin crdgen > crds/function.yaml`.

fn main() {
    match sluice_api::crd_yaml() {
        Ok(yaml) => print!("{yaml}"),
        Err(e) => {
            eprintln!("crdgen: cannot serialize the CRD: {e}");
            std::process::exit(1);
        }
    }
}
