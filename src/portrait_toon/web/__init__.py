"""The web page (Gradio): `page.py` lays it out, `handler.py` answers the `stylize` endpoint,
`examples.py` writes the example images, `model_card.py` says what the loaded model is."""
