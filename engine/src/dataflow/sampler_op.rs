//! The sampler operator: on the worker of the head (no exchange), it turns the
//! logits of a sequence's last token into a token id.
//!
//! Draws depend on the request's seed and the token's position only, so a
//! sequence restarted elsewhere draws the same tokens.

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use tokenflow_operators::sampler::sample;

use super::message::{LoopMsg, Payload};

/// Adds the sampler after the head.
pub fn sampler_operator<'s>(logits: StreamVec<'s, u64, LoopMsg>) -> StreamVec<'s, u64, LoopMsg> {
    logits.unary(Pipeline, "Sampler", |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for mut msg in data.drain(..) {
                    if let LoopMsg::Step(msg) = &mut msg
                        && let Payload::Logits(row) = &msg.payload
                    {
                        let position = (msg.start + msg.len) as usize;
                        let token = sample(&msg.sampling, row, &msg.history, position);
                        msg.payload = Payload::Sampled(token);
                        msg.history = Vec::new();
                    }
                    session.give(msg);
                }
            });
        }
    })
}
