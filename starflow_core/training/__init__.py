"""Framework-free pieces of training shared by both trainers: run files, schedule, checkpoint
files, image folders and the epoch order, the command line."""
