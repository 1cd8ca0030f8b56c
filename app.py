"""The ScoreVAE demo as a Hugging Face Space runs it (`python app.py`; Gradio SDK, see docs/app.md). The same page and
API as `scorevae app`: the bundled Fashion-MNIST pipeline, offline, one decode at a time."""

from diffusers_scorevae.app import launch

if __name__ == "__main__":
    launch()
