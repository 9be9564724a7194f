"""CamStyle: the target training set rendered in every other camera's style (StarGAN or colour transfer).

``ecnreid prepare`` calls ``camstyle.prepare.run_prepare``; the file-name rule it writes lives in
``ecnreid.data.camstyle_names`` and the dataset that reads the set back in ``ecnreid.data.camstyle_dataset``.
"""
