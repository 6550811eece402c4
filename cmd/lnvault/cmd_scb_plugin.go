package main

// Static channel backups inside the plugin: the extension registers itself
// with backupplugin when imported (staticbackup and emergency.recover shipped
// to every backup destination that has an SCB store).
import _ "github.com/lnvault/lnvault/scb/clnext"
