# Extract Jane Austen's six novels (Debian r-cran-janeaustenr) and Moby Dick
# (the `mobydick` data set of Debian r-cran-tokenizers) as plain UTF-8 text.
#   Rscript tools/corpus/extract_r.R OUTDIR
args <- commandArgs(trailingOnly = TRUE)
out <- args[1]
dir.create(out, showWarnings = FALSE, recursive = TRUE)
suppressMessages(library(janeaustenr))
b <- austen_books()
for (bk in levels(b$book)) {
  fn <- file.path(out, paste0("austen_", gsub("[^A-Za-z]+", "_", bk), ".txt"))
  con <- file(fn, "w", encoding = "UTF-8")
  writeLines(as.character(b$text[b$book == bk]), con)
  close(con)
}
suppressMessages(library(tokenizers))
con <- file(file.path(out, "mobydick.txt"), "w", encoding = "UTF-8")
writeLines(gsub("\r", "", mobydick), con)
close(con)
