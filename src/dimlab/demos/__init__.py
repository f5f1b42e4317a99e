"""CPU demos that need no download: the digits demo (:mod:`.digits`, ``make demo``) and the weak-to-strong
fine-tune demo (:mod:`.finetune`, ``make finetune-demo``). Their configs ship as package data."""
