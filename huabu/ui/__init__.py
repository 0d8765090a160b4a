"""The web studio (`huabu studio`), a face (top layer, beside huabu.server): a gradio app in Chinese and English
over the engine, gallery and prompt book. app.py holds the Studio, tabs/ one module per tab, fields.py the
gradio-free field logic, i18n/ the zh/en texts.

Import huabu.ui.app for the Studio; this package itself stays light so `huabu --help` does not load gradio.
"""
