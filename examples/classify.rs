//! Embedding netc: compile a network once, load weights, run it from two threads.
//!
//!     cargo run --release --example classify -- models/resnet18.net [weights.safetensors]
//!
//! Without a weights file it uses deterministic PyTorch-default random weights.

use netc_compiler::passes::PassOptions;
use netc_runtime::{HostTensor, Model, Weights};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let net = args.next().unwrap_or_else(|| "models/resnet18.net".into());
    let mut model = Model::from_file(&net, &["resolution=128"])?;
    model.optimize(&PassOptions::default())?;
    let weights = match args.next() {
        Some(path) => model.load_weights(path)?,
        None => Weights::pytorch_default(model.elaborated(), 0),
    };
    let session = model.session(&weights)?;
    let input = HostTensor::zeros(&[1, 3, 128, 128]);
    // `run` takes &self: one compiled session serves several threads.
    std::thread::scope(|s| {
        for t in 0..2 {
            let (session, input) = (&session, &input);
            s.spawn(move || {
                let out = session.run(std::slice::from_ref(input)).expect("run");
                println!(
                    "thread {t}: output shape {:?}, first logit {:.5}",
                    out[0].shape, out[0].data[0]
                );
            });
        }
    });
    Ok(())
}
