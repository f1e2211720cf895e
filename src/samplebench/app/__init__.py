"""The Gradio app (imported only by `samplebench app`)."""
