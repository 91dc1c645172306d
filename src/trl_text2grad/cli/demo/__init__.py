"""``trl-text2grad demo``: the offline end-to-end main job (:mod:`.run`), its settings (:mod:`.config`), generation
loop (:mod:`.generation`), tasks (:mod:`.tasks`), statistics (:mod:`.stats`) and report (:mod:`.report`);
:mod:`.main` is the command-line entry point."""
