# Made the committed fixture: run from /work/main at 60db6cb (format version 1, before issue 21) with
#   python make_v1.py <out>   -> <out>/subject (the v1 subject), <out>/expected.safetensors (what that code computed)
import sys, torch
sys.path.insert(0, "/work/main/tests")
from safetensors.torch import save_file
from _plugin_fixtures import make_subject
from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline
from subjectgen_diffusers import load_subject
out = sys.argv[1]
pipe = build_tiny_sd_pipeline(seed=0)
subject = make_subject(pipe, "<v1>", scope="kv+q+out", seed=3, magnitude=0.05)
subject.save(out + "/subject")
token = load_subject(pipe, out + "/subject")
ids = pipe.tokenizer(f"a photo of {token} {token}_1", padding="max_length", max_length=77, return_tensors="pt").input_ids
with torch.no_grad():
    hidden = pipe.text_encoder(ids)[0]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    unet_out = pipe.unet(latents, 500, encoder_hidden_states=hidden).sample
save_file({"input_ids": ids, "text_hidden": hidden.contiguous(), "latents": latents, "unet_out": unet_out.contiguous()}, out + "/expected.safetensors")
print(ids[0, :8], unet_out.abs().mean())
