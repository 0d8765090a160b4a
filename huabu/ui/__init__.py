"""The web studio (`huabu studio`): a gradio app in Chinese and English over the engine, gallery and prompt book.

Import huabu.ui.app for the Studio; this package itself stays light so `huabu --help` does not load gradio.
"""
